"""The gradient-cosine diagnostic (`log.grad_cosine`): each loss's unclipped variant (`clip=False`) and the
cosine between the clipped and the unclipped loss's gradients, hand-computed on a linear model whose token
log-probs are θ·φ, then through the Trainer on the tiny model (training unchanged, the cosine 1 when nothing
clips, below 1 when the band binds, counted per off-policy update)."""
import math
import textwrap

import pytest
import torch

from fairalign.algos import compute_policy_loss
from fairalign.cli import main
from fairalign.config import build_config
from fairalign.dist import Dist
from fairalign.train.trainer import Trainer
from fairalign.train.update import GradientCosine

# two sequences of two tokens; logp[i,t] = θ·φ[i,t], old_logp = 0, so ℓ = θ·φ
THETA = (0.5, -0.25)
PHI = [[(0.4, 0.0), (0.0, 0.4)], [(0.2, 0.2), (-0.6, 0.0)]]  # ℓ = [[0.2, -0.1], [0.05, -0.3]]
ADV = (1.0, -1.0)


def _inputs():
    theta = torch.tensor(THETA, dtype=torch.float64, requires_grad=True)
    phi = torch.tensor(PHI, dtype=torch.float64)  # [2, 2, 2]
    logp = phi @ theta  # [B=2, T=2]
    return theta, logp, torch.zeros(2, 2, dtype=torch.float64), torch.tensor(ADV, dtype=torch.float64), \
        torch.ones(2, 2, dtype=torch.bool)


def _grad(name, clip, **hp):
    theta, logp, old, adv, mask = _inputs()
    loss, stats = compute_policy_loss(name, logp, old, adv, mask, "token-mean", clip=clip, **hp)
    (g,) = torch.autograd.grad(loss, theta)
    return g.tolist(), stats


def _cos(a, b):
    return sum(x * y for x, y in zip(a, b)) / math.sqrt(sum(x * x for x in a) * sum(y * y for y in b))


def _token_grad(terms):
    """(1/4) Σ −A·w·φ over the listed (i, t, w) terms (token-mean over 4 tokens)."""
    g = [0.0, 0.0]
    for i, t, w in terms:
        for k in range(2):
            g[k] += -ADV[i] * w * PHI[i][t][k] / 4
    return g


def test_ppo_clipped_and_unclipped_gradients_hand_computed():
    """Band [0.8, 1.2]: token (0, 0) (A > 0, ℓ = 0.2 > ln 1.2) and token (1, 1) (A < 0, ℓ = −0.3 < ln 0.8)
    are clipped; the unclipped loss keeps all four tokens' −A·r·φ. By hand: unclipped gradient
    ¼(−0.4e^0.2 + 0.2e^0.05 − 0.6e^−0.3, −0.4e^−0.1 + 0.2e^0.05) = (−0.18070, −0.03792), clipped
    ¼(0.2e^0.05, −0.4e^−0.1 + 0.2e^0.05) = (0.05256, −0.03792): cosine −0.00806/(0.06481·0.18464) = −0.6735
    (the clipped update points away from the unclipped one)."""
    ell = [[0.2, -0.1], [0.05, -0.3]]
    full = _token_grad([(i, t, math.exp(ell[i][t])) for i in range(2) for t in range(2)])
    kept = _token_grad([(0, 1, math.exp(-0.1)), (1, 0, math.exp(0.05))])
    g_c, stats = _grad("ppo", True, clip_low=0.2, clip_high=0.2)
    g_u, stats_u = _grad("ppo", False, clip_low=0.2, clip_high=0.2, dual_clip=1.5)  # no band, no dual clip
    assert g_c == pytest.approx(kept, rel=1e-12) and g_u == pytest.approx(full, rel=1e-12)
    assert stats["clipped"].tolist() == [[True, False], [False, True]]
    assert not stats_u["clipped"].any() and stats_u["clip_frac"] == 0.0
    assert g_u == pytest.approx([-0.18070, -0.03792], abs=1e-5) and g_c == pytest.approx([0.05256, -0.03792], abs=1e-5)
    assert _cos(g_c, g_u) == pytest.approx(-0.6735, abs=1e-4)
    assert _cos(kept, full) == pytest.approx(_cos(g_c, g_u), rel=1e-12)


def test_fspo_and_gspo_unclipped_use_the_sequence_ratio():
    """FSPO: S = (0.1, −0.25), band [−c_low√2, c_high√2] with c_low 0.2, c_high 0.05: sequence 0 (A > 0,
    0.1 > 0.0707) is clipped, sequence 1 (A < 0, −0.25 > −0.283) is not; each token's gradient is
    −A·e^{S_i}·φ. GSPO: the sequence ratio is e^{mean ℓ} = (e^0.05, e^−0.125), band [0.8, 1.1] clips neither."""
    S = (0.1, -0.25)
    full = _token_grad([(i, t, math.exp(S[i])) for i in range(2) for t in range(2)])
    kept = _token_grad([(1, t, math.exp(S[1])) for t in range(2)])
    g_c, stats = _grad("fspo", True, c_low=0.2, c_high=0.05)
    g_u, _ = _grad("fspo", False, c_low=0.2, c_high=0.05)
    assert stats["clipped"].tolist() == [True, False]
    assert g_c == pytest.approx(kept, rel=1e-12) and g_u == pytest.approx(full, rel=1e-12)
    mean = (0.05, -0.125)
    g_c, stats = _grad("gspo", True, clip_low=0.2, clip_high=0.1)
    g_u, _ = _grad("gspo", False, clip_low=0.2, clip_high=0.1)
    assert not stats["clipped"].any()
    want = _token_grad([(i, t, math.exp(mean[i])) for i in range(2) for t in range(2)])
    assert g_c == pytest.approx(want, rel=1e-12) and g_u == pytest.approx(want, rel=1e-12)
    # cispo's unclipped weight is the raw ratio: the same gradient as ppo's unclipped loss
    g_u, _ = _grad("cispo", False, clip_high=0.01)
    assert g_u == pytest.approx(_grad("ppo", False)[0], rel=1e-12)


@pytest.mark.parametrize("separate", [False, True])
def test_gradient_cosine_accumulates_micro_batches(separate):
    """Each sequence as its own micro-batch (token-mean over the global 4 tokens): the accumulated
    gradients give the hand-computed cosine, whether the clipped gradient is read from .grad (the backward
    carries the policy loss only) or accumulated separately (it carries more terms)."""
    theta, logp, old, adv, mask = _inputs()
    cos = GradientCosine([theta], separate)
    for i in range(2):
        hp = {"clip_low": 0.2, "clip_high": 0.2, "global_tokens": 4.0}
        loss, _ = compute_policy_loss("ppo", logp[i:i + 1], old[i:i + 1], adv[i:i + 1], mask[i:i + 1], **hp)
        unclipped, _ = compute_policy_loss("ppo", logp[i:i + 1], old[i:i + 1], adv[i:i + 1], mask[i:i + 1],
                                           clip=False, **hp)
        cos.add(unclipped, loss)
        (loss + (theta.sum() * 7.0 if separate else 0.0)).backward(retain_graph=True)  # extra term: left out
    assert cos.cosine(Dist(), torch.nn.Linear(1, 1)) == pytest.approx(-0.6735, abs=1e-4)
    zero = GradientCosine([theta], True)  # everything clipped: the clipped gradient is 0
    zero.add(theta.sum(), theta.sum() * 0.0)
    assert zero.cosine(Dist(), torch.nn.Linear(1, 1)) == 0.0
    none = GradientCosine([theta], True)  # no advantage: no direction
    none.add(theta.sum() * 0.0, theta.sum() * 0.0)
    assert none.cosine(Dist(), torch.nn.Linear(1, 1)) is None


ESTIMATOR = textwrap.dedent('''
    import torch

    def spread(rewards, index, groups):
        """Advantages that never tie (the tiny model's rewards often do): -1 .. 1 over the batch."""
        return torch.linspace(-1.0, 1.0, rewards.numel())
''')


def _run(tmp_path, name, **algo):
    (tmp_path / "spread.py").write_text(ESTIMATOR)
    log = algo.pop("log", {})
    cfg = build_config({"model": "tiny", "steps": 2, "seed": 1, "output_dir": str(tmp_path / name),
                        "rollout": {"prompts_per_step": 2, "generations": 2, "max_new_tokens": 8},
                        "algo": {"advantage": f"{tmp_path / 'spread.py'}:spread", "ppo_epochs": 2,
                                 "minibatches": 2, **algo},
                        "optim": {"lr": 3e-2, "grad_clip": 0.0},
                        "log": {"progress": False, "tensorboard": False, **log}})
    tr = Trainer(cfg)
    rows = tr.train()
    return rows, {n: p.detach().clone() for n, p in tr.model.named_parameters()}


def test_trainer_logs_the_cosine_without_changing_training(tmp_path):
    band = {"loss": "ppo", "clip_low": 0.02, "clip_high": 0.02}
    off_rows, off_params = _run(tmp_path, "off", **band)
    on_rows, on_params = _run(tmp_path, "on", **band, log={"grad_cosine": True})
    for a, b in zip(off_rows, on_rows):
        assert a["loss"] == b["loss"] and a.get("clip_frac") == b.get("clip_frac")
        assert "grad_cosine" not in a
    for n, p in off_params.items():
        assert torch.equal(p, on_params[n])
    for r in on_rows:  # 2 epochs x 2 minibatches: 3 updates can clip
        assert r["grad_cosine/updates"] == r["clip/off_policy_updates"] == 3
        assert -1.0 <= r["grad_cosine/min"] <= r["grad_cosine"] <= 1.0
    assert any(r["clip_frac"] > 0 for r in on_rows) and min(r["grad_cosine/min"] for r in on_rows) < 0.999
    wide, _ = _run(tmp_path, "wide", loss="fspo", c_low=50.0, c_high=50.0, log={"grad_cosine": True})
    for r in wide:  # nothing clips: the two gradients are the same
        assert r["clip_frac"] == 0.0 and r["grad_cosine/min"] == pytest.approx(1.0, abs=1e-6)
    # with a KL term the clipped policy loss's gradient is taken alone: one off-policy update per step, the
    # first one after an on-policy update whose KL gradient is 0 up to float rounding (policy = reference; Adam
    # turns that rounding into a ~1e-5 difference), so step 1 agrees (with the KL gradient in: -0.08 vs 0.73)
    one, _ = _run(tmp_path, "one", **band, ppo_epochs=1, log={"grad_cosine": True})
    kl, _ = _run(tmp_path, "kl", **band, ppo_epochs=1, beta=0.5, log={"grad_cosine": True})
    assert one[0]["grad_cosine/updates"] == kl[0]["grad_cosine/updates"] == 1
    assert kl[0]["grad_cosine"] == pytest.approx(one[0]["grad_cosine"], abs=1e-3)


def test_a_user_loss_without_an_unclipped_variant_is_a_config_error(tmp_path, capsys):
    (tmp_path / "mine.py").write_text(textwrap.dedent('''
        from fairalign.algos import compute_policy_loss

        def mine(logp, old_logp, advantages, mask, *, agg, global_tokens, global_seqs, horizon):
            return compute_policy_loss("ppo", logp, old_logp, advantages, mask, agg, global_tokens=global_tokens,
                                       global_seqs=global_seqs)
    '''))
    code = main(["train", "grpo", "model=tiny", "steps=1", f"output_dir={tmp_path / 'run'}", "log.progress=false",
                 "log.tensorboard=false", "rollout.prompts_per_step=2", "rollout.generations=2",
                 "rollout.max_new_tokens=4", f"algo.loss={tmp_path / 'mine.py'}:mine", "log.grad_cosine=true"])
    assert code == 2
    assert "config key 'log.grad_cosine' needs a loss with an unclipped variant" in capsys.readouterr().err
