"""e2e: plain backprop; no aux heads, the classifier's loss spans every module."""

from pipelocal.methods.base import METHODS, LocalMethod


@METHODS.register("e2e")
class E2E(LocalMethod):
    name = "e2e"
    span_all = True

    def build_head(self, index):
        return None
