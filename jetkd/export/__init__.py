"""Export of trained taggers: the deploy form with its preprocessing, checked against PyTorch before it is written.

    onnx     jetkd.export.onnx.export_onnx: ONNX for HLT / offline inference (onnxruntime), contract in the metadata
"""
