"""Test-time adaptation on streams: adapt a deployed classifier to each incoming sample, then predict it."""
from pcmae.tta.adapter import PROTOCOLS, BadSample, StreamAdapter, TTAConfig, prepare_points, run_stream
from pcmae.tta.methods import TTA_METHODS, encoder_batchnorms
from pcmae.tta.streams import StreamSample, dataset_source, files_source, folder_source

__all__ = ["BadSample", "PROTOCOLS", "StreamAdapter", "StreamSample", "TTAConfig", "TTA_METHODS", "dataset_source",
           "encoder_batchnorms", "files_source", "folder_source", "prepare_points", "run_stream"]
