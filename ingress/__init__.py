"""The webhook ingress: provider webhooks in, durable Kafka records out."""
