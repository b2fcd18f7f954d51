// The review pages' only script (plain, no build step): worklist keys; the study viewer (image
// with window/level, heatmap layer, zoom and pan); a clip's cine player; verdict keys. Every page works without it,
// only slower to read with.
(function () {
  "use strict";

  function typing(element) {
    if (!element) return false;
    if (element.tagName === "TEXTAREA" || element.tagName === "SELECT" || element.isContentEditable) return true;
    return element.tagName === "INPUT" && !["checkbox", "radio", "range", "button", "submit"].includes(element.type);
  }

  function plainKey(event) {
    return !(event.ctrlKey || event.metaKey || event.altKey);
  }

  // A focused link, button or slider keeps its own keys (Enter, space, arrows), and so does a
  // radio or a checkbox its arrows: a screen reader's user moves through the verdicts with them,
  // and ArrowRight there left the study (found by an accessibility audit).
  function ownsKey(element, key) {
    if (!element) return false;
    if ((element.tagName === "A" || element.tagName === "BUTTON") && (key === "Enter" || key === " ")) return true;
    return ["range", "radio", "checkbox"].includes(element.type) && key.startsWith("Arrow");
  }

  function clamp(value, low, high) {
    return Math.min(high, Math.max(low, value));
  }

  // ---------------------------------------------------------------- worklist

  function worklist() {
    const rows = Array.from(document.querySelectorAll("#worklist tbody tr"));
    if (!rows.length) return;
    let index = 0;
    // The selected row is outlined and marked current, and its study link takes the focus
    // when the keys moved it, so a screen reader says which study Enter opens.
    function select(next, focus) {
      rows[index].classList.remove("selected");
      rows[index].removeAttribute("aria-current");
      index = clamp(next, 0, rows.length - 1);
      rows[index].classList.add("selected");
      rows[index].setAttribute("aria-current", "true");
      rows[index].scrollIntoView({ block: "nearest" });
      const link = rows[index].querySelector("a[href]");
      if (focus && link) link.focus({ preventScroll: true });
    }
    // The next unreviewed row below the selection (the order never changes under the reader).
    function nextUnreviewed() {
      for (let i = index + 1; i < rows.length; i++) {
        if (rows[i].classList.contains("unreviewed")) return i;
      }
      return index;
    }
    // Back from a verdict: the row just read stays where it was, selected, so j goes on from it.
    const justRead = rows.findIndex(function (row) { return row.classList.contains("just-read"); });
    select(justRead >= 0 ? justRead : 0);
    performance.mark("edge:worklist-ready");  // the page weight budget's end point (tests)
    rows.forEach(function (row) {
      row.addEventListener("click", function (event) {
        if (!event.target.closest("a")) window.location.href = row.dataset.href;
      });
    });
    document.addEventListener("keydown", function (event) {
      const active = document.activeElement;
      if (typing(active) || !plainKey(event) || ownsKey(active, event.key) || (active && active.closest("form"))) return;
      if (event.key === "j" || event.key === "ArrowDown") select(index + 1, true);
      else if (event.key === "k" || event.key === "ArrowUp") select(index - 1, true);
      else if (event.key === "n") select(nextUnreviewed(), true);
      else if (event.key === "Enter" || event.key === "o") window.location.href = rows[index].dataset.href;
      else return;
      event.preventDefault();
    });
  }

  // ---------------------------------------------------------------- study viewer

  // MATLAB-style jet, close to OpenCV's COLORMAP_JET that the device used.
  function jet(level) {
    const x = level / 255;
    const channel = function (centre) { return Math.round(255 * clamp(1.5 - Math.abs(4 * x - centre), 0, 1)); };
    return [channel(3), channel(2), channel(1)];
  }

  // Window presets on the 8-bit display image (not Hounsfield units: the hub holds a display
  // rendition), as [window, level]: lungs sit in the dark half, bone in the bright one.
  const PRESETS = {
    default: [256, 128],
    lung: [170, 80],
    soft: [140, 135],
    bone: [110, 195],
  };
  const PRESET_KEYS = { "1": "default", "2": "lung", "3": "soft", "4": "bone" };

  function viewer() {
    const root = document.getElementById("viewer");
    const frame = document.getElementById("frame");
    if (!root || !frame) return null;
    const stage = document.getElementById("stage");
    const imageCanvas = document.getElementById("image-canvas");
    const heatCanvas = document.getElementById("heat-canvas");
    const loading = document.getElementById("loading");
    const legend = document.getElementById("heat-legend");
    const measureLayer = document.getElementById("measure-layer");
    const measureLine = document.getElementById("measure-line");
    const fullWidth = Number(root.dataset.width);
    const fullHeight = Number(root.dataset.height);
    const greyscale = root.dataset.windowLevel === "1";  // X-ray: window/level; ultrasound: gain/contrast
    const control = function (id) { return document.getElementById(id); };
    const view = { scale: 1, x: 0, y: 0, fitWidth: 0, fitHeight: 0 };
    const wl = { window: 256, level: 128, invert: false, gain: 100, contrast: 100 };
    let source = null;
    let target = null;
    let loadedWidth = 0;
    let requestedWidth = 0;
    let pending = false;
    let layerRequested = false;
    let measuring = false;

    function lookup() {
      const lut = new Uint8ClampedArray(256);
      const low = wl.level - wl.window / 2;
      for (let value = 0; value < 256; value++) {
        if (greyscale) {
          const out = ((value - low) / wl.window) * 255;
          lut[value] = wl.invert ? 255 - out : out;
        } else {
          lut[value] = ((value * wl.gain) / 100 - 128) * (wl.contrast / 100) + 128;
        }
      }
      return lut;
    }

    function render() {
      pending = false;
      if (!source) return;
      const lut = lookup();
      const from = source.data;
      const to = target.data;
      for (let i = 0; i < from.length; i += 4) {
        to[i] = lut[from[i]];
        to[i + 1] = lut[from[i + 1]];
        to[i + 2] = lut[from[i + 2]];
        to[i + 3] = 255;
      }
      imageCanvas.getContext("2d").putImageData(target, 0, 0);
      if (greyscale) {
        const shown = control("wl-value");
        if (shown) shown.value = "W " + Math.round(wl.window) + " L " + Math.round(wl.level) + (wl.invert ? " inverted" : "");
        root.dataset.window = String(Math.round(wl.window));
        root.dataset.level = String(Math.round(wl.level));
        root.dataset.invert = wl.invert ? "1" : "0";
      } else {
        const shown = control("gc-value");
        if (shown) shown.value = "gain " + Math.round(wl.gain) + "% contrast " + Math.round(wl.contrast) + "%";
        root.dataset.gain = String(Math.round(wl.gain));
        root.dataset.contrast = String(Math.round(wl.contrast));
      }
    }

    function schedule() {
      if (!pending) {
        pending = true;
        window.requestAnimationFrame(render);
      }
    }

    function shown() {
      if (loading) loading.hidden = true;
      root.dataset.loaded = String(loadedWidth);
      performance.mark("edge:image-shown");
      document.dispatchEvent(new CustomEvent("edge:image-shown"));
    }

    function load(width) {
      requestedWidth = width;
      const picture = new Image();
      picture.decoding = "async";
      if (!loadedWidth) {
        picture.className = "preview";  // a progressive JPEG paints while it arrives
        picture.alt = "";  // decorative: the canvas above it carries the image's label
        frame.insertBefore(picture, frame.firstChild);
      }
      picture.onload = function () {
        const scratch = document.createElement("canvas");
        scratch.width = picture.naturalWidth;
        scratch.height = picture.naturalHeight;
        const context = scratch.getContext("2d", { willReadFrequently: true });
        context.drawImage(picture, 0, 0);
        source = context.getImageData(0, 0, scratch.width, scratch.height);
        target = new ImageData(scratch.width, scratch.height);
        imageCanvas.width = scratch.width;
        imageCanvas.height = scratch.height;
        loadedWidth = picture.naturalWidth;
        render();
        if (picture.parentNode) picture.parentNode.removeChild(picture);
        shown();
        loadLayer();  // after the image: the heat is off until asked for, it must not delay it
      };
      picture.onerror = function () {
        if (loading) loading.textContent = "The image could not be loaded: reload the page. The verdict stays closed until it is shown.";
      };
      picture.src = root.dataset.image + "?w=" + width;
    }

    function wantedWidth() {
      const ratio = window.devicePixelRatio || 1;
      return Math.min(fullWidth, Math.ceil(view.fitWidth * view.scale * ratio));
    }

    function sharpen() {
      // Zoomed in past what was fetched: fetch the next size up (once per size).
      const wanted = wantedWidth();
      if (loadedWidth && wanted > loadedWidth * 1.25 && wanted > requestedWidth && loadedWidth < fullWidth) load(wanted);
    }

    function place() {
      frame.style.width = view.fitWidth + "px";
      frame.style.height = view.fitHeight + "px";
      frame.style.transform = "translate(" + view.x + "px, " + view.y + "px) scale(" + view.scale + ")";
      const zoom = control("zoom-value");
      if (zoom) zoom.value = view.scale === 1 ? "fit" : Math.round(view.scale * 100) + "%";
      root.dataset.scale = view.scale.toFixed(2);
    }

    function fit() {
      const scale = Math.min(stage.clientWidth / fullWidth, stage.clientHeight / fullHeight);
      view.fitWidth = Math.max(1, Math.round(fullWidth * scale));
      view.fitHeight = Math.max(1, Math.round(fullHeight * scale));
      view.scale = 1;
      view.x = (stage.clientWidth - view.fitWidth) / 2;
      view.y = (stage.clientHeight - view.fitHeight) / 2;
      place();
    }

    function zoomAt(x, y, factor) {
      const scale = clamp(view.scale * factor, 0.5, 16);
      const k = scale / view.scale;
      view.x = x - (x - view.x) * k;
      view.y = y - (y - view.y) * k;
      view.scale = scale;
      place();
      sharpen();
    }

    function zoomCentre(factor) {
      zoomAt(stage.clientWidth / 2, stage.clientHeight / 2, factor);
    }

    function loadLayer() {
      const kind = root.dataset.layerKind;
      if (!kind || !heatCanvas || layerRequested) return;
      layerRequested = true;
      const picture = new Image();
      picture.onload = function () {
        heatCanvas.width = picture.naturalWidth;
        heatCanvas.height = picture.naturalHeight;
        const context = heatCanvas.getContext("2d");
        context.drawImage(picture, 0, 0);
        if (kind === "heat") {
          // Grey heat -> jet colour, with the heat itself as the alpha: cold stays clear.
          const pixels = context.getImageData(0, 0, heatCanvas.width, heatCanvas.height);
          const data = pixels.data;
          const colours = [];
          for (let level = 0; level < 256; level++) colours.push(jet(level));
          for (let i = 0; i < data.length; i += 4) {
            const colour = colours[data[i + 1]];
            data[i + 3] = data[i + 1];
            data[i] = colour[0];
            data[i + 1] = colour[1];
            data[i + 2] = colour[2];
          }
          context.putImageData(pixels, 0, 0);
        }
        root.dataset.layerLoaded = kind;
      };
      picture.src = root.dataset.layer;
      setOpacity(Number(control("heat-opacity") ? control("heat-opacity").value : 60));
    }

    function setOpacity(percent) {
      const slider = control("heat-opacity");
      const value = clamp(percent, 0, 100);
      if (slider) slider.value = String(value);
      if (heatCanvas) heatCanvas.style.opacity = String(value / 100);
      root.dataset.opacity = String(value);
    }

    // Off until the reader asks: a colour map drawn before the reader has looked anchors them
    // on where the model looked.
    function toggleHeat(show) {
      const box = control("heat-toggle");
      if (!box || !heatCanvas) return;
      box.checked = show === undefined ? !box.checked : show;
      heatCanvas.hidden = !box.checked;
      if (legend) legend.hidden = !box.checked;
      root.dataset.heat = box.checked ? "on" : "off";
      if (box.checked) loadLayer();
    }

    function setWindowLevel(window_, level, invert) {
      if (!greyscale) return;
      wl.window = clamp(window_, 1, 512);
      wl.level = clamp(level, 0, 255);
      if (invert !== undefined) wl.invert = invert;
      if (control("window")) control("window").value = String(Math.round(wl.window));
      if (control("level")) control("level").value = String(Math.round(wl.level));
      root.querySelectorAll(".preset").forEach(function (button) {
        const preset = PRESETS[button.dataset.preset];
        button.setAttribute("aria-pressed", String(preset[0] === Math.round(wl.window) && preset[1] === Math.round(wl.level)));
      });
      schedule();
    }

    function preset(name) {
      if (!greyscale || !PRESETS[name]) return false;
      setWindowLevel(PRESETS[name][0], PRESETS[name][1]);
      root.dataset.preset = name;
      return true;
    }

    function setGainContrast(gain, contrast) {
      if (greyscale) return;
      wl.gain = clamp(gain, 25, 300);
      wl.contrast = clamp(contrast, 25, 300);
      if (control("gain")) control("gain").value = String(Math.round(wl.gain));
      if (control("contrast")) control("contrast").value = String(Math.round(wl.contrast));
      schedule();
    }

    function reset() {
      setWindowLevel(256, 128, false);
      setGainContrast(100, 100);
      fit();
    }

    // ------------------------------------------------------------ measurement

    // Stage pixels -> pixels of the picture shown (its full width, data-width).
    function toPicture(clientX, clientY) {
      const box = stage.getBoundingClientRect();
      const x = (clientX - box.left - view.x) / view.scale;
      const y = (clientY - box.top - view.y) / view.scale;
      return { x: (x * fullWidth) / view.fitWidth, y: (y * fullHeight) / view.fitHeight };
    }

    // A length between two picture points: in mm through the original image's pixel spacing
    // (the picture may be a smaller rendition of it), else in the original's pixels.
    function length(a, b) {
      const toOriginal = Number(root.dataset.originalWidth || fullWidth) / fullWidth;
      const dx = (b.x - a.x) * toOriginal;
      const dy = (b.y - a.y) * toOriginal;
      const row = Number(root.dataset.spacingRow);
      const column = Number(root.dataset.spacingColumn);
      if (row > 0 && column > 0) {
        const mm = Math.hypot(dx * column, dy * row);
        return { value: mm, text: mm.toFixed(1) + " mm (" + root.dataset.spacingSource + ")" };
      }
      const px = Math.hypot(dx, dy);
      return { value: px, text: Math.round(px) + " px (image pixels: no pixel spacing was sent)" };
    }

    function drawMeasure(a, b) {
      measureLayer.setAttribute("viewBox", "0 0 " + fullWidth + " " + fullHeight);
      measureLine.setAttribute("x1", String(a.x));
      measureLine.setAttribute("y1", String(a.y));
      measureLine.setAttribute("x2", String(b.x));
      measureLine.setAttribute("y2", String(b.y));
      measureLayer.classList.add("visible");
      const result = length(a, b);
      control("measure-value").value = result.text;
      root.dataset.measure = result.value.toFixed(2);
      root.dataset.measureUnit = root.dataset.spacingRow ? "mm" : "px";
    }

    function toggleMeasure(on) {
      measuring = on === undefined ? !measuring : on;
      const button = control("measure");
      if (button) button.setAttribute("aria-pressed", String(measuring));
      stage.classList.toggle("measuring", measuring);
      root.dataset.measuring = measuring ? "1" : "0";
    }

    // Pointer: drag pans; right button or shift drags window (across) and level (down), or gain
    // and contrast on ultrasound; in measure mode a drag draws the ruler.
    let drag = null;
    stage.addEventListener("contextmenu", function (event) { event.preventDefault(); });
    stage.addEventListener("pointerdown", function (event) {
      const ruler = measuring && event.button === 0 && !event.shiftKey;
      drag = { x: event.clientX, y: event.clientY, wl: event.button === 2 || event.shiftKey, ruler: ruler };
      if (ruler) drag.start = toPicture(event.clientX, event.clientY);
      stage.setPointerCapture(event.pointerId);
      stage.classList.add("dragging");
    });
    stage.addEventListener("pointermove", function (event) {
      if (!drag) return;
      const dx = event.clientX - drag.x;
      const dy = event.clientY - drag.y;
      drag.x = event.clientX;
      drag.y = event.clientY;
      if (drag.ruler) {
        drawMeasure(drag.start, toPicture(event.clientX, event.clientY));
      } else if (drag.wl) {
        if (greyscale) setWindowLevel(wl.window + dx, wl.level + dy * 0.5);
        else setGainContrast(wl.gain - dy * 0.5, wl.contrast + dx * 0.5);
      } else {
        view.x += dx;
        view.y += dy;
        place();
      }
    });
    function endDrag() {
      drag = null;
      stage.classList.remove("dragging");
    }
    stage.addEventListener("pointerup", endDrag);
    stage.addEventListener("pointercancel", endDrag);
    // The wheel zooms the image where the page has nothing to scroll (a laptop's screen: the
    // whole reading fits), with Ctrl, or once the image was clicked; otherwise it scrolls the
    // page, so a zoomed-in or small screen does not trap the reader above the verdict form.
    let engaged = false;
    stage.addEventListener("pointerdown", function () { engaged = true; });
    stage.addEventListener("pointerleave", function () { engaged = false; });
    stage.addEventListener("wheel", function (event) {
      const scrolls = document.documentElement.scrollHeight > window.innerHeight + 1;
      if (scrolls && !engaged && !event.ctrlKey) return;
      event.preventDefault();
      const box = stage.getBoundingClientRect();
      zoomAt(event.clientX - box.left, event.clientY - box.top, Math.exp(-event.deltaY * 0.0015));
    }, { passive: false });
    stage.addEventListener("dblclick", reset);
    window.addEventListener("resize", fit);

    const bind = function (id, type, handler) { if (control(id)) control(id).addEventListener(type, handler); };
    // After a mouse click the tool buttons give the keyboard back to the shortcuts. Pressed from
    // the keyboard (detail 0) they keep the focus: its ring shows where the reader is, and the
    // next Enter presses the tool again rather than sending the verdict.
    root.querySelectorAll(".tools button, .tools input[type=checkbox]").forEach(function (tool) {
      tool.addEventListener("click", function (event) { if (event.detail > 0) tool.blur(); });
    });
    root.querySelectorAll(".preset").forEach(function (button) {
      button.addEventListener("click", function () { preset(button.dataset.preset); });
    });
    bind("heat-toggle", "change", function () { toggleHeat(control("heat-toggle").checked); });
    bind("heat-opacity", "input", function () { setOpacity(Number(control("heat-opacity").value)); });
    bind("window", "input", function () { setWindowLevel(Number(control("window").value), wl.level); });
    bind("level", "input", function () { setWindowLevel(wl.window, Number(control("level").value)); });
    bind("invert", "click", function () { setWindowLevel(wl.window, wl.level, !wl.invert); });
    bind("gain", "input", function () { setGainContrast(Number(control("gain").value), wl.contrast); });
    bind("contrast", "input", function () { setGainContrast(wl.gain, Number(control("contrast").value)); });
    bind("measure", "click", function () { toggleMeasure(); });
    bind("zoom-in", "click", function () { zoomCentre(1.25); });
    bind("zoom-out", "click", function () { zoomCentre(0.8); });
    bind("reset", "click", reset);

    fit();
    load(wantedWidth());
    toggleHeat(false);
    setWindowLevel(256, 128, false);

    return {
      key: function (key) {
        if (key === "h") toggleHeat();
        else if (key === "[") setOpacity(Number(root.dataset.opacity || 60) - 10);
        else if (key === "]") setOpacity(Number(root.dataset.opacity || 60) + 10);
        else if (key === "i") setWindowLevel(wl.window, wl.level, !wl.invert);
        else if (key in PRESET_KEYS) return preset(PRESET_KEYS[key]);
        else if (key === "m") toggleMeasure();
        else if (key === "r" || key === "0") reset();
        else if (key === "+" || key === "=") zoomCentre(1.25);
        else if (key === "-") zoomCentre(0.8);
        else return false;
        return true;
      },
    };
  }

  // ---------------------------------------------------------------- cine

  // A clip's frames as one filmstrip (the device stacked them top to bottom, edge/video/
  // filmstrip.py): frame i is band i of the one picture, shown for as long as the clip showed
  // it (the frames' own times, not a fixed rate). The still above keeps heatmap and window.
  function cine() {
    const root = document.getElementById("cine");
    if (!root) return null;
    const canvas = document.getElementById("cine-canvas");
    const counter = document.getElementById("cine-counter");
    const playButton = document.getElementById("cine-play");
    const cursor = document.getElementById("cine-cursor");
    const count = Number(root.dataset.frames);
    const width = Number(root.dataset.frameWidth);
    const height = Number(root.dataset.frameHeight);
    const times = root.dataset.times.split(",").map(Number);
    const chances = root.dataset.p.split(",").map(function (value) { return value === "" ? null : Number(value); });
    const strip = new Image();
    let index = 0;
    let timer = null;
    let ready = false;

    function draw() {
      if (ready) canvas.getContext("2d").drawImage(strip, 0, index * height, width, height, 0, 0, width, height);
      let text = "frame " + (index + 1) + " / " + count + ", " + times[index].toFixed(1) + " s";
      if (chances[index] !== null) text += ", p " + Math.round(chances[index] * 100) + "%";
      counter.value = text;
      root.dataset.frame = String(index);
      if (cursor) {  // where this frame sits on the clip's probability curve
        const x = ((times[index] - Number(cursor.dataset.start)) / Number(cursor.dataset.span)) * (Number(cursor.dataset.width) - 2) + 1;
        cursor.setAttribute("x1", x.toFixed(1));
        cursor.setAttribute("x2", x.toFixed(1));
      }
    }

    function show(next) {
      index = (next + count) % count;
      draw();
    }

    function gap() {  // to the next frame's time; the last frame waits one mean gap, then loops
      if (index + 1 < count) return times[index + 1] - times[index];
      return count > 1 ? (times[count - 1] - times[0]) / (count - 1) : 0.5;
    }

    function tick() {
      timer = window.setTimeout(function () {
        show(index + 1);
        tick();
      }, Math.max(40, gap() * 1000));
    }

    function play(on) {
      const playing = (on === undefined ? timer === null : on) && count > 1;
      if (timer !== null) window.clearTimeout(timer);
      timer = null;
      if (playing) tick();
      playButton.setAttribute("aria-pressed", String(playing));
      playButton.firstChild.textContent = playing ? "pause " : "play ";
      root.dataset.playing = playing ? "1" : "0";
    }

    function step(delta) {
      play(false);
      show(index + delta);
    }

    strip.onload = function () {
      ready = true;
      draw();
      root.dataset.loaded = "1";
    };
    strip.onerror = function () { counter.value = "The cine could not be loaded: reload the page."; };
    strip.src = root.dataset.src;
    playButton.addEventListener("click", function () { play(); });
    document.getElementById("cine-previous").addEventListener("click", function () { step(-1); });
    document.getElementById("cine-next").addEventListener("click", function () { step(1); });
    draw();

    return {
      key: function (key) {
        if (key === " ") play();
        else if (key === ",") step(-1);
        else if (key === ".") step(1);
        else return false;
        return true;
      },
    };
  }

  // ---------------------------------------------------------------- drafts

  // An unsent verdict outlives a lost session (2 h idle, a hub restart): the form's values are
  // kept in this tab (sessionStorage: gone with the tab, never sent anywhere) until the hub says
  // it saved them, and offered again on the study after logging in again.
  function draftKey(path) { return "edge:draft:" + path.split("?")[0].replace(/\/review$/, ""); }

  function forgetSaved() {
    const saved = document.getElementById("just-read");
    if (!saved) return;
    try { sessionStorage.removeItem(draftKey(new URL(saved.href).pathname)); } catch (error) { /* storage off */ }
  }

  function keepDrafts(form, finding, note) {
    const key = draftKey(new URL(form.action).pathname);
    const checked = function () { return form.querySelector("input[name=verdict]:checked"); };
    function store() {
      const draft = { verdict: checked() ? checked().value : "", finding: finding.value, note: note.value };
      try { sessionStorage.setItem(key, JSON.stringify(draft)); } catch (error) { /* storage off or full */ }
    }
    let draft = null;
    try { draft = JSON.parse(sessionStorage.getItem(key) || "null"); } catch (error) { draft = null; }
    if (draft && !checked() && !note.value && (draft.verdict || draft.note)) {
      const radio = document.getElementById("verdict-" + draft.verdict);
      if (radio) radio.checked = true;
      finding.value = draft.finding || finding.value;
      note.value = draft.note || "";
      const kept = document.createElement("p");
      kept.className = "notice";
      kept.setAttribute("role", "status");
      kept.id = "draft-restored";
      kept.textContent = "Your unsent verdict on this study was kept: check it, then send it.";
      form.insertBefore(kept, form.firstChild.nextSibling);
      announce(kept.textContent);
    }
    form.addEventListener("input", store);
    form.addEventListener("change", store);
  }

  // ---------------------------------------------------------------- notices read out

  // A live region announces a change, not what was in the page when it loaded: a notice the hub
  // rendered ("Verdict saved"), or one added with its text, went unsaid by screen readers. The
  // page carries an empty region (base.html); the notices' words go into it once the page is up.
  function announce(words) {
    const region = document.getElementById("announcer");
    if (!region || !words) return;
    region.textContent = "";
    window.setTimeout(function () { region.textContent = words; }, 300);
  }

  function announceNotices() {
    const shown = document.querySelectorAll("main .notice[role=status]");
    announce(Array.prototype.map.call(shown, function (notice) { return notice.textContent.trim(); }).join(" "));
  }

  // ---------------------------------------------------------------- verdict

  function verdict(pictures) {
    const form = document.getElementById("verdict-form");
    if (!form) return;
    const finding = document.getElementById("finding");
    const note = document.getElementById("note");
    const labels = finding.dataset.labels ? finding.dataset.labels.split("|") : [];
    const fields = document.getElementById("verdict-fields");
    const send = document.getElementById("send");
    // Closed (in the page itself, so no early click gets through) until the image is on screen:
    // a verdict on a study the reader has not seen is not a reading.
    function open() { return !fields.disabled; }
    document.addEventListener("edge:image-shown", function () {
      fields.disabled = false;
      if (!form.dataset.sent) send.disabled = false;
      const wait = document.getElementById("verdict-wait");
      if (wait) wait.hidden = true;
      form.dataset.open = "1";
    });
    const model = finding.dataset.model;
    let findingTouched = finding.value !== "";
    finding.addEventListener("input", function () { findingTouched = finding.value !== ""; });

    function suggested(value) {
      if (value === "agree") return model;
      if (value === "disagree" && labels.length === 2 && labels.includes(model)) {
        return labels.find(function (label) { return label !== model; });
      }
      return "";
    }

    function choose(value) {
      const radio = document.getElementById("verdict-" + value);
      radio.checked = true;
      radio.dispatchEvent(new Event("change", { bubbles: true }));
    }

    form.querySelectorAll("input[name=verdict]").forEach(function (radio) {
      radio.addEventListener("change", function () {
        if (!findingTouched) finding.value = suggested(radio.value);
      });
    });

    form.addEventListener("submit", function (event) {
      if (!open()) {
        event.preventDefault();
        return;
      }
      if (!form.querySelector("input[name=verdict]:checked")) {
        event.preventDefault();
        let message = form.querySelector(".error.client");
        if (!message) {
          message = document.createElement("p");
          message.className = "error client";
          message.setAttribute("role", "alert");
          form.insertBefore(message, form.firstChild.nextSibling);
        }
        message.textContent = "Choose a verdict first: a (agree), d (disagree) or u (uncertain).";
        return;
      }
      if (form.dataset.sent) {  // one verdict per press, however fast the key repeats
        event.preventDefault();
        return;
      }
      form.dataset.sent = "1";
      document.getElementById("send").disabled = true;
    });

    keepDrafts(form, finding, note);

    const go = function (id) {
      const link = document.getElementById(id);
      if (link) window.location.href = link.href;
    };

    document.addEventListener("keydown", function (event) {
      const active = document.activeElement;
      if (typing(active)) {
        if (event.key === "Escape") active.blur();
        else if (event.key === "Enter" && active === note && (event.ctrlKey || event.metaKey)) form.requestSubmit();
        else return;
        event.preventDefault();
        return;
      }
      if (!plainKey(event) || ownsKey(active, event.key)) return;
      const key = event.key;
      if (["a", "d", "u", "Enter"].includes(key) && !open()) {
        event.preventDefault();  // the image is not shown yet: no verdict keys
        return;
      }
      if (key === "a") choose("agree");
      else if (key === "d") choose("disagree");
      else if (key === "u") choose("uncertain");
      else if (key === "Enter") {
        // Only from the page itself or the form: Enter on a focused tool is that tool's.
        if (active && active !== document.body && !form.contains(active)) return;
        form.requestSubmit();
      }
      else if (key === "f") finding.focus();
      else if (key === "n") note.focus();
      else if (key === "j" || key === "ArrowRight") go("next");
      else if (key === "k" || key === "ArrowLeft") go("previous");
      else if (!(pictures && pictures.key(key))) return;
      event.preventDefault();
    });
  }

  document.addEventListener("DOMContentLoaded", function () {
    forgetSaved();
    announceNotices();
    worklist();
    const still = viewer();
    const player = cine();
    verdict({ key: function (key) { return Boolean((still && still.key(key)) || (player && player.key(key))); } });
  });
})();
