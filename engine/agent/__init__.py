"""The agent runtime: the run loop (``runner``), who picks the next step (``coordinator``
by rules, ``arbiter`` by model), the specialists' conversations, the prompts, and the
run's writer (``runlog``). It uses the model layer, the tools and the state machines."""
