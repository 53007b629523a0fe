import math

import pytest
import torch

from vae.config import ModelConfig
from vae.kinds import KINDS
from vae.losses import iw_log_likelihood, iwae_bound, kl_std_normal, log_normal, recon_bce
from vae.models import build_model


@pytest.mark.parametrize("kind", ["vae", "ae", "conv-vae"])
def test_models_return_named_outputs_of_the_right_shapes(kind):
    model = build_model(ModelConfig(kind=kind, latent=7, hidden=(64, 32)))
    x = torch.rand(5, 784)
    out = model(x)
    assert out.recon_logits.shape == (5, 784)
    assert out.mu.shape == (5, 7) and out.z.shape == (5, 7)
    assert (out.logvar is None) == (kind == "ae")
    if kind != "ae":
        s = model.sample(3)
        assert s.shape == (3, 784) and s.min() >= 0 and s.max() <= 1
    else:
        with pytest.raises(TypeError, match="no prior"):
            model.sample(3)


def test_seed_architecture_is_784_400_20():
    model = build_model(ModelConfig())
    shapes = [tuple(p.shape) for p in model.parameters()]
    assert shapes == [(400, 784), (400,), (20, 400), (20,), (20, 400), (20,), (400, 20), (400,), (784, 400), (784,)]


def test_eps_makes_the_forward_deterministic_and_sample_false_decodes_the_mean():
    model = build_model(ModelConfig())
    x, eps = torch.rand(4, 784), torch.randn(4, 20)
    a, b = model(x, eps=eps), model(x, eps=eps)
    assert torch.equal(a.recon_logits, b.recon_logits)
    m = model(x, sample=False)
    assert torch.equal(m.z, m.mu)


def test_kl_matches_a_monte_carlo_estimate():
    g = torch.Generator().manual_seed(0)
    mu, logvar = torch.randn(3, 5, generator=g), torch.randn(3, 5, generator=g) * 0.5
    eps = torch.randn(200_000, 3, 5, generator=g, dtype=torch.float64)
    z = mu.double() + torch.exp(0.5 * logvar.double()) * eps
    log_ratio = log_normal(z, mu.double(), logvar.double()) - log_normal(z)  # (S, 3)
    mc, se = log_ratio.mean(0), log_ratio.std(0) / math.sqrt(eps.shape[0])
    exact = kl_std_normal(mu.double(), logvar.double())
    assert torch.all((mc - exact).abs() < 4 * se + 1e-3), (mc, exact, se)
    assert torch.all(exact >= 0)


def test_recon_bce_is_stable_where_sigmoid_then_bce_is_not():
    logits = torch.tensor([[200.0, -200.0]])
    target = torch.tensor([[0.0, 1.0]])
    assert torch.allclose(recon_bce(logits, target), torch.tensor([400.0]))


def test_the_iwae_bound_with_one_sample_is_the_single_sample_neg_elbo():
    torch.manual_seed(0)
    model = build_model(ModelConfig(latent=4, hidden=(32,)))
    x = torch.rand(6, 784)
    eps = torch.randn(1, 6, 4)
    mu, logvar = model.encode(x)
    z = mu + torch.exp(0.5 * logvar) * eps[0]
    single = recon_bce(model.decode(z), x) + log_normal(z, mu, logvar) - log_normal(z)
    assert torch.allclose(iwae_bound(model(x, eps=eps), x, eps), single, atol=1e-4)


def test_iw_estimate_is_below_the_elbo_and_tightens_with_k(trained, mnist5k):
    from vae.checkpoint import load_model
    from vae.evaluation import elbo_metrics

    model, cfg, _ = load_model(trained[0])
    images = mnist5k.val.images[:300]
    x = images.reshape(-1, 784).float() / 255
    neg_elbo = elbo_metrics(model, images, cfg)["neg_elbo"]
    g = torch.Generator().manual_seed(1)
    nll = {k: -iw_log_likelihood(model, x, k, generator=g).mean().item() for k in (1, 10, 200)}
    assert abs(nll[1] - neg_elbo) < 2.0  # K=1 is the ELBO (up to Monte-Carlo noise)
    assert nll[200] < nll[10] < neg_elbo
    assert neg_elbo - nll[200] > 1.0


def test_iw_estimate_equals_a_direct_log_mean_exp():
    from torch.distributions import Bernoulli, Normal

    torch.manual_seed(0)
    model = build_model(ModelConfig(latent=3, hidden=(16,)))
    x = (torch.rand(2, 784) < 0.3).float()
    k = 40
    got = iw_log_likelihood(model, x, k, generator=torch.Generator().manual_seed(7))
    eps = torch.randn(k, 2, 3, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        mu, logvar = model.encode(x)
        q = Normal(mu, torch.exp(0.5 * logvar))
        z = mu + torch.exp(0.5 * logvar) * eps
        log_w = (
            Bernoulli(logits=model.decode(z)).log_prob(x).sum(-1)
            + Normal(0.0, 1.0).log_prob(z).sum(-1)
            - q.log_prob(z).sum(-1)
        )
        direct = torch.log(torch.exp(log_w.double() - log_w.max(0).values.double()).mean(0)) + log_w.max(0).values
    assert torch.allclose(got, direct.float(), atol=1e-3)


@pytest.mark.parametrize("kind", ["vae", "conv-vae"])
def test_iw_estimate_of_grey_levels_matches_the_cross_entropy_of_each_sample(kind):
    # the MLP decoders take the folded path (x . l as a matmul, softplus in place), conv-vae recon_bce:
    # both must give log-mean-exp of -recon_bce + log p(z) - log q(z|x) over the same draws
    torch.manual_seed(0)
    model = build_model(ModelConfig(kind=kind, latent=3, hidden=(16,)))
    x = torch.rand(4, 784)
    k = 30
    got = iw_log_likelihood(model, x, k, generator=torch.Generator().manual_seed(3), max_elements=784 * 4 * 7)
    eps = torch.randn(k, 4, 3, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        mu, logvar = model.encode(x)
        z = mu + torch.exp(0.5 * logvar) * eps
        logits = model.decode(z.reshape(-1, 3)).reshape(k, 4, 784)
        log_w = -recon_bce(logits, x.expand_as(logits)) + log_normal(z) - log_normal(eps) + 0.5 * logvar.sum(-1)
        direct = torch.logsumexp(log_w.double(), 0) - math.log(k)
    assert torch.allclose(got.double(), direct, atol=1e-3)


def test_the_blocked_softplus_sum_matches_softplus_in_double_precision():
    from vae.losses import softplus_sum

    torch.manual_seed(0)
    logits = torch.cat([torch.randn(500, 784) * 8, torch.full((1, 784), -90.0), torch.full((1, 784), 90.0)])
    exact = torch.nn.functional.softplus(logits.double()).sum(-1)
    assert torch.allclose(softplus_sum(logits.clone()).double(), exact, rtol=1e-6, atol=1e-3)
    assert torch.allclose(
        softplus_sum(logits[:, :783].clone()).double(),
        exact - torch.nn.functional.softplus(logits[:, 783].double()),
        rtol=1e-6,
        atol=1e-3,
    )  # a width that is no multiple of the block


def test_iw_estimate_is_the_same_whatever_the_chunking():
    torch.manual_seed(0)
    model = build_model(ModelConfig(latent=4, hidden=(32,)))
    x = torch.rand(3, 784)
    a = iw_log_likelihood(model, x, 50, generator=torch.Generator().manual_seed(5))
    b = iw_log_likelihood(model, x, 50, generator=torch.Generator().manual_seed(5), max_elements=784 * 3 * 7)
    assert torch.allclose(a, b, atol=1e-4)


@pytest.mark.parametrize("name", list(KINDS))
def test_each_kind_of_the_table_builds_the_model_it_describes(name):
    kind = KINDS[name]
    narrow, wide = (build_model(ModelConfig(kind=name, hidden=(32,), channels=c)) for c in (4, 8))
    assert type(narrow).__name__ == kind.model and narrow.is_variational == kind.variational
    widths_differ = sum(p.numel() for p in narrow.parameters()) != sum(p.numel() for p in wide.parameters())
    assert widths_differ == kind.convolutional  # `channels` sets the width of exactly the convolutional kinds
    x = torch.rand(3, 784)
    terms = narrow.terms(x, torch.Generator().manual_seed(0))
    assert tuple(terms) == narrow.TERMS and narrow.SCORE in terms and all(t.shape == (3,) for t in terms.values())
