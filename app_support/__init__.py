"""The app's support code: what every page of ``pages/`` shares, kept outside that folder.

Streamlit's ``pages/`` mode turns every ``.py`` directly in ``pages/`` into a page, so the shared code
lives here: :mod:`app_support.frame` (the one call each page starts with: page config, navigation,
the shared model / layer / head pickers), :mod:`app_support.state` (the session keys and every
``st.cache_*`` loader) and :mod:`app_support.ui` (error guard, charts, small widgets and tables);
:mod:`app_support.interact` (clicked selections, presenter mode) and :mod:`app_support.links` (deep
links, the lesson path) serve the lecture hall.

The library (:mod:`relpos`) never imports this package; this package never does tensor math itself.
"""
