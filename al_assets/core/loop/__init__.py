"""The active-learning loop, framework-free: select -> (label) -> import -> train -> gate.

Each step is one function here, called by the Dagster assets and by the simulation alike, so
the simulation measures exactly the loop users run (with an oracle in place of the labeler).
"""
