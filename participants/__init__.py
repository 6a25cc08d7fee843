"""The participants SDK: a worker that answers saga commands, and example participants."""
