"""Training TV3S with our model code (ROS-free): the official recipe, streaming-aware runs,
mmcv-format checkpoints. The CLI is ``tv3s-train`` (``tv3s_ros.tools.train``).

```python
from tv3s_ros.train import TrainConfig, Trainer
trainer = Trainer(TrainConfig(dataset="world/", work_dir="runs/demo", preset="tv3s_b0_cityscapes",
                              iters=2000, batch=2, crop=(256, 512)))
print(trainer.summary()); trainer.run()
```
"""
from tv3s_ros.train.loop import TrainConfig, Trainer, TrainingDiverged
from tv3s_ros.train.recipe import Recipe

__all__ = ["TrainConfig", "Trainer", "TrainingDiverged", "Recipe"]
