"""The digits tasks as ``sparsa bench merge`` scores them: the suite of
:mod:`sparsa.nn.digits_suite` behind the task-family interface of :mod:`sparsa.bench.merge`."""

import torch

from sparsa.data.digits_tasks import digits_domain
from sparsa.nn.digits_suite import Suite, make_model, task_loss

State = dict[str, torch.Tensor]


class DigitsTasks:
    """The digits suite as ``sparsa bench merge`` scores it (see :mod:`sparsa.bench.merge`).

    A batch is ``(x, y)``: images float32 [b, 8, 8] and labels int64 [b]. Weights are whole state dicts.
    """

    metric = "accuracy"

    def __init__(self, suite: "Suite"):
        self.suite = suite
        self.settings, self.base, self.finetuned = suite.settings, suite.base, suite.finetuned
        self.tasks = list(suite.settings.domains)
        self.model, self.base_model = make_model(suite.settings), make_model(suite.settings, suite.base)
        self.test = {d: digits_domain(d, "test") for d in self.tasks}

    @property
    def params(self) -> int:
        return sum(t.numel() for t in self.base.values())

    def task_vectors(self) -> dict[str, State]:
        return self.suite.task_vectors()

    def loss(self, task: str):
        return task_loss(self.settings, task)

    def test_batches(self, task: str, batch: int):
        x, y = self.test[task]
        return [(x[i:i + batch], y[i:i + batch]) for i in range(0, len(x), batch)]

    @torch.inference_mode()
    def evaluate(self, weights: State, x: torch.Tensor, y: torch.Tensor) -> tuple[int, int]:
        """``(right, samples)`` of one batch, the weights loaded into the model first."""
        self.model.load_state_dict(weights)
        return int((self.model(x).argmax(-1) == y).sum()), len(y)

    @staticmethod
    def summarize(total: float, count: int) -> float:
        return total / count

    @staticmethod
    def normalize(value: float, individual: float) -> float:
        return value / individual

    def query(self, task: str, n: int) -> torch.Tensor:
        return digits_domain(task, "train")[0][:n]

    def side_branch(self, vectors):
        """``evaluate(task_weights, x, y) -> (right, samples)`` on a base model whose linear layers apply
        the compressed task vectors as sparse side branches (:class:`~sparsa.merge.switch_linear.Switch`)."""
        from sparsa.merge.switch_linear import Switch

        model = make_model(self.settings, self.base)
        switch = Switch(model, vectors)

        @torch.inference_mode()
        def evaluate(task_weights, x, y):
            switch.set(task_weights)
            return int((model(x).argmax(-1) == y).sum()), len(y)
        return evaluate

    @torch.inference_mode()
    def features(self, kind: str, x: torch.Tensor) -> torch.Tensor:
        """[b, d]: ``output`` the base's final CLS feature, ``input`` its patch embeddings, flattened."""
        return self.base_model.features(x) if kind == "output" else self.base_model.patch_features(x).flatten(1)
