"""The run log: events, the delivery ledger and failure classification."""

from simulator.recording.recorder import Recorder

__all__ = ["Recorder"]
