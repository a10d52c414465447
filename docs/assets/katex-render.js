// Typeset the formulas that pymdownx.arithmatex (generic mode) marks: \( .. \) inline, \[ .. \] display.
// KaTeX and its fonts are served with the site (docs/assets/katex/), so formulas render offline.
// With throwOnError: false, a formula KaTeX cannot parse is shown as red source (class katex-error)
// and an unknown command in red (errorColor #cc0000); scripts/screenshot_docs.py looks for both.
document$.subscribe(() => {
  for (const element of document.querySelectorAll(".arithmatex")) {
    renderMathInElement(element, {
      delimiters: [
        { left: "\\(", right: "\\)", display: false },
        { left: "\\[", right: "\\]", display: true },
      ],
      throwOnError: false,
    });
  }
});
