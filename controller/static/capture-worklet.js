// Microphone capture on the audio thread: mono float samples at the AudioContext's rate in,
// PCM16 little-endian at 24 kHz out, posted to the page in fixed-size chunks (plus a level for the meter).
"use strict";

// Windowed-sinc resampler that keeps its state between blocks, so the output is one continuous signal.
class StreamResampler {
  constructor(inRate, outRate) {
    this.step = inRate / outRate; // input samples per output sample
    this.passthrough = inRate === outRate;
    const ratio = Math.min(1, outRate / inRate);
    this.half = Math.ceil(8 / ratio); // taps each side, in input samples
    this.phases = 128;
    const cutoff = 0.5 * ratio * 0.92; // cycles per input sample, a little below the output Nyquist
    const width = 2 * this.half;
    this.table = new Float32Array((this.phases + 1) * width);
    for (let p = 0; p <= this.phases; p++) {
      const frac = p / this.phases;
      let sum = 0;
      for (let j = 0; j < width; j++) {
        const t = j - this.half + 1 - frac; // distance from the output position
        const x = 2 * cutoff * t;
        const sinc = x === 0 ? 1 : Math.sin(Math.PI * x) / (Math.PI * x);
        const w = 0.5 + 0.5 * Math.cos((Math.PI * t) / (this.half + 1)); // Hann
        const v = 2 * cutoff * sinc * w;
        this.table[p * width + j] = v;
        sum += v;
      }
      for (let j = 0; j < width; j++) this.table[p * width + j] /= sum; // unity gain at DC
    }
    this.buf = new Float32Array(this.half - 1); // zeros before the first sample: output 0 is input 0
    this.pos = this.half - 1; // next output position, in input samples from buf[0]
  }

  process(input) {
    if (this.passthrough) return input.slice();
    const buf = new Float32Array(this.buf.length + input.length);
    buf.set(this.buf);
    buf.set(input, this.buf.length);
    const width = 2 * this.half;
    const out = [];
    while (Math.floor(this.pos) + this.half < buf.length) {
      const base = Math.floor(this.pos);
      const phase = Math.round((this.pos - base) * this.phases);
      const row = phase * width;
      const first = base - this.half + 1;
      let acc = 0;
      for (let j = 0; j < width; j++) acc += buf[first + j] * this.table[row + j];
      out.push(acc);
      this.pos += this.step;
    }
    const keep = Math.max(0, Math.floor(this.pos) - this.half + 1);
    this.buf = buf.slice(keep);
    this.pos -= keep;
    return Float32Array.from(out);
  }
}

class Pcm16Capture extends AudioWorkletProcessor {
  constructor(options) {
    super();
    const opts = options.processorOptions || {};
    this.targetRate = opts.targetRate || 24000;
    this.chunk = Math.round((this.targetRate * (opts.chunkMs || 40)) / 1000);
    this.resampler = new StreamResampler(sampleRate, this.targetRate);
    this.pending = new Int16Array(this.chunk);
    this.fill = 0;
    this.sumSquares = 0;
    this.running = true;
    this.port.onmessage = (e) => {
      if (e.data === "stop") this.running = false;
    };
  }

  process(inputs) {
    if (!this.running) return false;
    const channels = inputs[0];
    if (!channels || channels.length === 0) return true; // no input connected yet
    let mono = channels[0];
    if (channels.length > 1) {
      mono = new Float32Array(channels[0].length);
      for (const ch of channels) for (let i = 0; i < ch.length; i++) mono[i] += ch[i] / channels.length;
    }
    const out = this.resampler.process(mono);
    for (let i = 0; i < out.length; i++) {
      const s = Math.max(-1, Math.min(1, out[i]));
      this.sumSquares += s * s;
      this.pending[this.fill++] = s < 0 ? Math.round(s * 32768) : Math.round(s * 32767);
      if (this.fill === this.chunk) {
        const pcm = this.pending;
        this.port.postMessage({ pcm: pcm.buffer, level: Math.sqrt(this.sumSquares / this.chunk) }, [pcm.buffer]);
        this.pending = new Int16Array(this.chunk);
        this.fill = 0;
        this.sumSquares = 0;
      }
    }
    return true;
  }
}

registerProcessor("pcm16-capture", Pcm16Capture);
