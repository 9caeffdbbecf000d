from inception_lab.models.inception import (
    TABLE1,
    TORCHVISION_STAGES,
    Inception,
    InceptionOutput,
    InceptionSpec,
    PoolSpec,
    googlenet,
    make_divisible,
)

__all__ = ["TABLE1", "TORCHVISION_STAGES", "Inception", "InceptionOutput", "InceptionSpec", "PoolSpec", "googlenet",
           "make_divisible"]
