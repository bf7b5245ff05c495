"""lamstream's torch side: behaviour models, batching, training and registry (no Kafka here)."""
