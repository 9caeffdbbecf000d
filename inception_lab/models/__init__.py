from inception_lab.models.cost import format_table, summarize
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
           "make_divisible", "format_table", "summarize"]
