"""Real fine detail for new scans (``AugmentConfig.fine_detail``).

A new scan is the decoder's mean at a latent drawn for it. That mean is smooth: what the few
latents cannot hold (fine texture, sharp edges) the Gaussian likelihood averages away, and on
the harder demo cohort it keeps about two thirds of real scans' high-frequency energy
(docs/RESULTS.md). A classifier trained on such scans partly learns "blurry means AD".

``FineDetail`` gives each new scan the fine detail of a real one: the residual ``x_i - r_i`` of
the training scan ``x_i`` whose reconstruction ``r_i`` (decoder mean at its posterior mean) lies
nearest the new scan. The new scan keeps its own anatomy, which the model drew, and carries
detail from the real subject that anatomy is closest to. Augment applies it before the near-copy
check, so the memorisation audit judges the scans that are delivered; since the residual is
added to both sides alike, a scan's distance to x_i equals its decoder mean's distance to r_i.
The residual is a real subject's data: it is used where the real scans are at hand and are part
of the output anyway (augment), never stored in a saved model (sample jobs draw decoder means).
"""

from __future__ import annotations

import torch

from .report import nearest_real


@torch.no_grad()
def reconstruct(model, x: torch.Tensor, batch: int = 16) -> torch.Tensor:
    """Decoder means at the posterior means of scans ``x`` (on the CPU): the model's
    reconstructions. ``model``: anything with ``encode`` (posterior mean first) and ``decode``."""
    device = next(iter(model.parameters())).device
    return torch.cat([model.decode(model.encode(x[start:start + batch].to(device).float())[0]).cpu()
                      for start in range(0, len(x), batch)])


class FineDetail:
    """``FineDetail(model, train_x)(scans)``: scans plus the residual of the nearest training
    scan (nearest by RMS distance to its reconstruction). ``model``: anything with ``encode``
    (posterior mean first) and ``decode``, a ``ClassView`` included; ``train_x``: the scans the
    model learned this class from, (N, *data_shape), on the CPU like the scans it is applied to."""

    def __init__(self, model, train_x: torch.Tensor, batch: int = 16, sigma: float = 0.0):
        if len(train_x) == 0:
            raise ValueError("fine detail needs at least one training scan")
        self.reconstructions = reconstruct(model, train_x, batch)
        self.residuals = train_x.float() - self.reconstructions
        if sigma > 0:  # keep only what is finer than a Gaussian of sigma voxels
            from monai.networks.layers import GaussianFilter

            smooth = GaussianFilter(train_x.dim() - 2, sigma)
            self.residuals = self.residuals - smooth(self.residuals)

    def nearest(self, scans: torch.Tensor) -> torch.Tensor:
        """Index of the training scan whose reconstruction is nearest each scan, (B,)."""
        return nearest_real(self.reconstructions, scans)[1]

    def __call__(self, scans: torch.Tensor) -> torch.Tensor:
        return scans + self.residuals[self.nearest(scans)]
