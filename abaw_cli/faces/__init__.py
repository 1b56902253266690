"""Face detection, alignment and video reading: the library behind `crop-faces` and `predict`.

    sources.expand_inputs(paths)        -> typed Sources (videos, image sequences) + skipped inputs
    video.open_source(source, fps)      -> background-thread frame reader (Frame: index, time_s, rgb, path)
    detector.FaceDetector(...).detect   -> batched MTCNN: boxes, scores, 5 landmarks per frame
    align.align_face(rgb, landmarks, size) -> aligned crop + 2x3 matrix (5-point similarity)
    tracker.FaceTracker().update(dets)  -> stable track ids
    follow.LandmarkFollower             -> optical-flow following between detections (detect_every)
    stream.iter_frame_faces(...)        -> the streaming core: FrameFaces with aligned Face crops
    manifest                            -> the faces.csv table (columns, rows, atomic writing)

Each module's docstring gives its contract; nothing here imports torch until a detector is built.
"""
