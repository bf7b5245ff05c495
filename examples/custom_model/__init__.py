"""An example of bringing your own model to lamstream: a small torch model behind a Predictor.

Serve it with `PYTHONPATH=examples lamstream worker --predictor custom_model:make_predictor`;
check it with `PYTHONPATH=examples lamstream model check custom_model:make_predictor`.
"""

from custom_model.predictor import CATALOGUE, TasteNet, TastePredictor, make_predictor

__all__ = ["CATALOGUE", "TasteNet", "TastePredictor", "make_predictor"]
