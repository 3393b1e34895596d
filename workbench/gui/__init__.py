"""The Qt desktop application on top of workbench.core."""
