"""``python -m monai_genaug.data --kind endoscopy --out DIR --num 20``: write a phantom data set to disk."""

from monai_genaug.data.phantoms import main

if __name__ == "__main__":
    main()
