"""LoRA adapters (PEFT format) served beside the base model: reading and checking them
(peft_adapter.py), finding them (resolve.py) and loading them into the model's layers
(attach.py); the batched math lives in layers/lora.py."""
