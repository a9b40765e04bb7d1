"""Models: build from a plain config, rebuild from any state_dict by its shapes.

``load_weights(path)`` is the one entry point the commands use; architectures plug in through
:mod:`vggc.models.registry`.
"""

from vggc.models import mobilenet as _mobilenet
from vggc.models import vgg as _vgg
from vggc.models.loader import LoadedModel, load_weights, model_from_state_dict, unwrap_state_dict
from vggc.models.mobilenet import MobileNetV2Cifar, MobileNetV2Config, build_mobilenet_v2, mobilenet_v2_cifar
from vggc.models.registry import Architecture, architectures, register
from vggc.models.stats import count_macs, count_params, layer_table
from vggc.models.vgg import VGG, VGGConfig, build_vgg, vgg16_cifar

register(Architecture(family="vgg", matches=_vgg.is_vgg_state_dict,
                      config_from_state_dict=_vgg.vgg_config_from_state_dict, build=build_vgg))
# registered after VGG so it is tried first (a MobileNetV2 state_dict also has features.* + classifier.*)
register(Architecture(family="mobilenet_v2", matches=_mobilenet.is_mobilenet_v2_state_dict,
                      config_from_state_dict=_mobilenet.mobilenet_config_from_state_dict,
                      build=build_mobilenet_v2))

__all__ = ["Architecture", "LoadedModel", "MobileNetV2Cifar", "MobileNetV2Config", "VGG", "VGGConfig",
           "architectures", "build_mobilenet_v2", "build_vgg", "count_macs", "count_params", "layer_table",
           "load_weights", "mobilenet_v2_cifar", "model_from_state_dict", "register", "unwrap_state_dict",
           "vgg16_cifar"]
