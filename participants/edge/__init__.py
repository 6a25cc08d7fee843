"""The RabbitMQ and Redis edge that the participants SDK and the orchestrator both stand on.

It lives under `participants` because the SDK must not import the
orchestrator, while the orchestrator may import anything below it; nothing
here imports the SDK or the orchestrator, only `statemachines` (the names
and the wire messages).
"""
