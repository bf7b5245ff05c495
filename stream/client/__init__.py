"""The user SDK: EventProducer in, PredictionSubscriber and tail() out, Async* on aiokafka."""

from stream.client.aio import AsyncEventProducer, AsyncPredictionSubscriber
from stream.client.codec import ConsumerRecord, Headers, Prediction, Value
from stream.client.config import as_settings
from stream.client.producer import DeliveryCallback, EventProducer, announce_model
from stream.client.subscriber import PredictionSubscriber, tail

__all__ = [
    "AsyncEventProducer",
    "AsyncPredictionSubscriber",
    "ConsumerRecord",
    "DeliveryCallback",
    "EventProducer",
    "Headers",
    "Prediction",
    "PredictionSubscriber",
    "Value",
    "announce_model",
    "as_settings",
    "tail",
]
