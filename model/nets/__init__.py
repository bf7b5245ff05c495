"""Neural architectures, one per module; `build_recommender` picks one by name."""

from model.nets.base import SeqRecConfig, SeqRecNet
from model.nets.build import RECOMMENDER_NETS, build_recommender
from model.nets.gru import GRURec
from model.nets.risk import RiskConfig, RiskNet
from model.nets.sasrec import SASRec

__all__ = ["GRURec", "RiskConfig", "RiskNet", "SASRec", "SeqRecConfig", "SeqRecNet",
           "build_recommender", "RECOMMENDER_NETS"]
