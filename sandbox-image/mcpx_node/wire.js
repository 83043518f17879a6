"use strict";
// JSON-RPC framing, as mcpx_runtime/wire.py: one JSON object per line, no line over the frame limit.

/** A peer sent a line longer than the frame limit: the stream cannot be resynchronised. */
class FrameTooLarge extends Error {}

/** The message a line stands for; null for a line that is not a JSON object. */
function decode(line) {
  let value;
  try {
    value = JSON.parse(line.toString("utf8"));
  } catch {
    return null;
  }
  return value !== null && typeof value === "object" && !Array.isArray(value) ? value : null;
}

/** Splits a byte stream into decoded messages; a line is joined once, however many chunks it came in. */
class LineReader {
  constructor(limit) {
    this.limit = limit;
    this.parts = [];
    this.size = 0;
  }

  /** The complete messages up to the end of `chunk`; throws FrameTooLarge. */
  feed(chunk) {
    const messages = [];
    let start = 0;
    let end;
    while ((end = chunk.indexOf(10, start)) >= 0) {
      const tail = chunk.subarray(start, end);
      const size = this.size + tail.length;
      const line = this.parts.length > 0 ? Buffer.concat([...this.parts, tail], size) : tail;
      this.parts = [];
      this.size = 0;
      start = end + 1;
      if (size > this.limit) throw new FrameTooLarge(`a line of ${size} bytes`);
      messages.push(decode(line));
    }
    if (start < chunk.length) {
      this.parts.push(chunk.subarray(start));
      this.size += chunk.length - start;
    }
    if (this.size > this.limit) throw new FrameTooLarge(`a line of over ${this.size} bytes`);
    return messages;
  }
}

module.exports = { LineReader };
