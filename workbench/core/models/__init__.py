from workbench.core.models.conv4 import Conv4, conv4_feature_dim

__all__ = ["Conv4", "conv4_feature_dim"]
