"""The participants SDK: a worker that answers saga commands (`worker`), and example participants.

`edge/` is the RabbitMQ and Redis edge it shares with the orchestrator.
"""
