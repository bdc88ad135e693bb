"""The state machines: the phase machine and the task machine on one small core
(``machine``). They read projected state and say which moves are allowed; the tools
and the agent both use them, and they import nothing above ``projections``."""
