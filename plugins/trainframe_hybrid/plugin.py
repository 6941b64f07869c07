"""Registration: the hybrid controller, its baselines, outer Nesterov, selective backprop, and
``trainframe bench predictive``."""

import trainframe
from trainframe_hybrid.controller import (
    ExtrapolateConfig,
    HybridConfig,
    HybridController,
    NowcastConfig,
    SkipConfig,
)
from trainframe_hybrid.outer import GatedOuterConfig, OuterConfig, build_gated_outer, build_outer
from trainframe_hybrid.selective import SelectiveConfig, build_selective


def build_controller(cfg: HybridConfig) -> HybridController:
    return HybridController(cfg)


@trainframe.hookimpl
def trainframe_register(registry):
    from trainframe_hybrid import bench

    registry.add("phases", "hybrid", build_controller, HybridConfig,
                 help="warmup/full/predict/correct with a GRU dynamics ensemble and a residual corrector")
    registry.add("phases", "nowcast", build_controller, NowcastConfig,
                 help="hybrid with per-parameter linear extrapolation from weight snapshots as the direction")
    registry.add("phases", "extrapolate", build_controller, ExtrapolateConfig,
                 help="baseline: predicted steps apply the recent mean update, no learned model")
    registry.add("phases", "skip", build_controller, SkipConfig,
                 help="baseline: predicted steps are forward-only with frozen weights")
    registry.add("phases", "outer", build_outer, OuterConfig,
                 help="full steps; every K steps an outer Nesterov step on the K-step displacement")
    registry.add("phases", "outer-gated", build_gated_outer, GatedOuterConfig,
                 help="outer Nesterov whose step size the dynamics ensemble picks, verified with rollback")
    registry.add("phases", "selective", build_selective, SelectiveConfig,
                 help="backward on the rows with the highest loss at their last visit (or a random share)")
    registry.add_command("bench predictive", bench.main, bench.add_arguments,
                         help="compare phase controllers: val loss against wall-clock, backward passes, FLOPs")
