"""The shared training loop: divergence stops it with a clear error, damaged checkpoints are named."""

import pytest
import torch

from vgfcli.errors import TrainingDiverged, VgfError
from vgfcli.methods.base import best_by_q
from vgfcli.training import Checkpoints, fit


class Bar:
    def advance(self, n):
        pass


def run_fit(tmp_path, step_fn, steps=20, checkpoint_every=4, log_every=5, state=None, warn=None):
    checkpoints = Checkpoints(tmp_path)
    logged, saved = [], []
    orig_save = checkpoints.save

    def save(s):
        saved.append(s["step"])
        orig_save(s)

    checkpoints.save = save
    weights = {"w": torch.ones(3)} if state is None else state
    start = fit(steps=steps, step_fn=step_fn, state_fn=lambda: {"net": weights},
                load_fn=lambda s: int(s["step"]), checkpoints=checkpoints, checkpoint_every=checkpoint_every,
                log_every=log_every, log=lambda m, step: logged.append(step), bar=Bar(), warn=warn)
    return start, logged, saved


def test_a_nan_loss_stops_training_naming_the_first_bad_step(tmp_path):
    def step_fn(step):
        loss = torch.tensor(float("nan") if step >= 6 else 1.0)  # step index 6 = the 7th update
        return {"loss": loss, "q": torch.tensor(2.0)}

    with pytest.raises(TrainingDiverged, match=r"non-finite loss at step 7 \(loss=nan") as info:
        run_fit(tmp_path, step_fn)
    assert info.value.exit_code == 1 and info.value.keep_run
    # the checkpoint of step 4 was written; none after the NaN (step 8 is refused before saving)
    assert Checkpoints(tmp_path).load()["step"] == 4


def test_an_inf_metric_counts_too_and_finite_runs_pass(tmp_path):
    with pytest.raises(TrainingDiverged, match="step 3"):
        run_fit(tmp_path / "a", lambda s: {"loss": torch.tensor(float("inf") if s == 2 else 0.5)})
    start, logged, saved = run_fit(tmp_path / "b", lambda s: {"loss": torch.tensor(0.5)})
    assert (start, logged, saved) == (0, [5, 10, 15, 20], [4, 8, 12, 16])


def test_non_finite_final_weights_fail_the_run(tmp_path):
    with pytest.raises(TrainingDiverged, match=r"non-finite values in net.w after step 20"):
        run_fit(tmp_path, lambda s: {"loss": torch.tensor(0.5)}, state={"w": torch.tensor([1.0, float("nan")])})


def test_an_unreadable_checkpoint_is_a_warning_naming_the_file(tmp_path):
    (tmp_path / "last.pt").write_bytes(b"not a checkpoint")
    warnings = []
    start, _, _ = run_fit(tmp_path, lambda s: {"loss": torch.tensor(0.5)}, warn=warnings.append)
    assert start == 0
    assert len(warnings) == 1 and str(tmp_path / "last.pt") in warnings[0] and "step 0" in warnings[0]


def test_a_checkpoint_that_does_not_fit_is_an_error_naming_the_file(tmp_path):
    Checkpoints(tmp_path).save({"step": 3})
    with pytest.raises(VgfError, match="last.pt does not fit this run"):
        fit(steps=5, step_fn=lambda s: {}, state_fn=dict, load_fn=lambda s: s["missing"],
            checkpoints=Checkpoints(tmp_path), checkpoint_every=2, log_every=2, log=lambda m, s: None, bar=Bar())


def test_best_of_n_never_selects_a_nan_q():
    def critic(obs, actions):                        # Q = the action itself, NaN for candidate 1
        q = actions[..., 0].clone()
        q[:, 1] = float("nan")
        return q.unsqueeze(0)

    candidates = torch.tensor([[[0.1], [0.9], [0.5]], [[0.7], [0.2], [0.3]]])
    picked = best_by_q(critic, torch.zeros(2, 1), candidates, "mean")
    assert picked.flatten().tolist() == pytest.approx([0.5, 0.7])
