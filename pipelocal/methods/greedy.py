"""greedy: each module trained by a linear probe on its pooled output (global avg pool -> Linear, CE).

On a ViT the probe pools the tokens (their mean) -> LayerNorm -> Linear: the ViT head's kind (base.probe_net).
"""

from pipelocal.methods.base import METHODS, CrossEntropyHead, LocalMethod, probe_net


@METHODS.register("greedy")
class Greedy(LocalMethod):
    name = "greedy"

    def build_head(self, index):
        return CrossEntropyHead(probe_net(self.info, self.info.module_shapes[index]))
