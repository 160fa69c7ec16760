"""The model registry's pretrained_cfg: what input every registered model is made for."""

import pytest
import torch

from largekernel.models import create_model, list_models, pretrained_cfg


@pytest.mark.parametrize("name", list_models())
def test_every_model_states_its_input(name):
    cfg = pretrained_cfg(name)
    channels = cfg["input_size"][0]
    assert cfg["architecture"] == name and cfg["classifier"] == "head"
    assert len(cfg["mean"]) == len(cfg["std"]) == channels and all(s > 0 for s in cfg["std"])
    assert isinstance(cfg["num_classes"], int) and cfg["num_classes"] > 0


@pytest.mark.parametrize("name", ["dwnet1d_tiny", "dwnet2d_tiny", "resnet20", "flexnet_tiny", "ckcnn_tiny",
                                  "vit_tiny", "convnext_atto"])
def test_a_model_runs_on_its_stated_input_and_names_its_parts(name):
    model = create_model(name).eval()
    cfg = model.pretrained_cfg
    assert cfg == pretrained_cfg(name)
    with torch.no_grad():
        out = model(torch.zeros(1, *cfg["input_size"]))
    assert out.shape == (1, cfg["num_classes"])
    modules = dict(model.named_modules())
    assert isinstance(modules[cfg["classifier"]], torch.nn.Linear)
    assert modules[cfg["classifier"]].out_features == cfg["num_classes"]
    assert modules[cfg["first_conv"]].in_channels == cfg["input_size"][0]


def test_cfg_follows_the_instance_and_unknown_names_fail():
    assert create_model("resnet20", num_classes=3).pretrained_cfg["num_classes"] == 3
    assert pretrained_cfg("resnet20")["num_classes"] == 10
    with pytest.raises(ValueError, match="unknown model name 'resnet21'"):
        pretrained_cfg("resnet21")
