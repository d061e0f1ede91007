import torch
import torch.nn.functional as F


def identity_grid(shape, n, device=None):
    theta = torch.eye(3, 4, device=device).unsqueeze(0).expand(n, 3, 4)
    return F.affine_grid(theta, (n, 1, *shape), align_corners=True)


def field(params, shape):
    return F.interpolate(params, size=shape, mode="trilinear", align_corners=True).permute(0, 2, 3, 4, 1)


def warp(x, disp, mode="bilinear"):
    grid = identity_grid(x.shape[2:], len(x), x.device) + disp
    return F.grid_sample(x, grid, mode=mode, padding_mode="border", align_corners=True)


def register(moving, fixed, control=6, steps=80, lr=0.02, smooth=1.0):
    """A smooth displacement (B, D, H, W, 3) that takes ``moving`` onto ``fixed`` (least squares)."""
    shape = moving.shape[2:]
    p = torch.zeros(len(moving), 3, *(control,) * 3, requires_grad=True)
    opt = torch.optim.Adam([p], lr=lr)
    scale = fixed.flatten(1).var(1).mean()
    for _ in range(steps):
        opt.zero_grad()
        disp = field(p, shape)
        loss = ((warp(moving, disp) - fixed) ** 2).mean() / scale
        reg = sum(((p.diff(dim=d)) ** 2).mean() for d in (2, 3, 4))
        (loss + smooth * reg).backward()
        opt.step()
    with torch.no_grad():
        return field(p, shape), float(loss)
