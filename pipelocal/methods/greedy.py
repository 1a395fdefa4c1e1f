"""greedy: each module trained by a linear probe on its pooled output (global avg pool -> Linear, CE)."""

from pipelocal.methods.base import METHODS, CrossEntropyHead, LocalMethod
from pipelocal.models import Classifier


@METHODS.register("greedy")
class Greedy(LocalMethod):
    name = "greedy"

    def build_head(self, index):
        return CrossEntropyHead(Classifier(self.info.module_shapes[index][0], self.info.num_classes))
