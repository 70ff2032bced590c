"""HDAP Studio web app: entry page (the full app replaces this first slice)."""

import streamlit as st

st.set_page_config(page_title="HDAP Studio", layout="wide")
st.title("HDAP Studio")
st.write(
    "Prune one network for a whole fleet of drifted edge devices. "
    "The fleet, model and run pages are being built; the engine is already usable "
    "from the command line: `hdap models`, `hdap prune`."
)
