"""Shared layer of reelrl: config, CLI, wire protocol, queue, video, data, and the driver.

Everything that more than one process role (rollout actor, learner, driver) needs lives here.
"""
