"""lamstream's streaming side: everything that touches Kafka or Faust."""
