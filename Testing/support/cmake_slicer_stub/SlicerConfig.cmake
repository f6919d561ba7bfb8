# A stand-in for Slicer's build tree, so `cmake` can configure this extension here.
# The macros mirror what Slicer's and CTK's do with their arguments (file checks, where
# each file is copied) and write the resulting (source -> destination) pairs to
# ${CMAKE_BINARY_DIR}/install-manifest.txt for Testing/project/test_packaging.py.
set(Slicer_USE_FILE ${CMAKE_CURRENT_LIST_DIR}/UseSlicer.cmake)
set(Slicer_EXTENSION_GENERATE_CONFIG ${CMAKE_CURRENT_LIST_DIR}/ExtensionGenerateConfig.cmake)
set(Slicer_EXTENSION_CPACK ${CMAKE_CURRENT_LIST_DIR}/ExtensionCPack.cmake)
set(Slicer_FOUND TRUE)
