"""Face alignment: detect five landmarks (MTCNN), fit a similarity transform onto the
insightface 112 x 112 template, warp. ``template`` -> ``similarity`` -> ``detect`` -> ``crop``
(one image) -> ``folder`` (``facetrip align``). Needs the ``align`` extra for detection."""
