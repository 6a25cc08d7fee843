"""The I/O shell: Redis store, RabbitMQ transport, timers, the service and the CLI."""
