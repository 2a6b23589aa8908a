"""Test scores: top-1 accuracy, or the mIoU of a segmentation model (`metrics`)."""
