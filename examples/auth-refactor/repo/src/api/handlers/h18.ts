// src/api/handlers/h18.ts: part of the auth-refactor example repository (generated filler).

export function h18_handler_0(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 0;
}
export function h18_handler_1(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 1;
}
export function h18_handler_2(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 2;
}
export function h18_handler_3(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 3;
}
export function h18_handler_4(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 4;
}
export function h18_handler_5(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 5;
}
export function h18_handler_6(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 6;
}
export function h18_handler_7(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 0;
}
export function h18_handler_8(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 1;
}
export function h18_handler_9(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 2;
}
export function h18_handler_10(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 3;
}
export function h18_handler_11(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 4;
}
export function h18_handler_12(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 5;
}
export function h18_handler_13(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 6;
}
export function h18_handler_14(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 0;
}
export function h18_handler_15(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 1;
}
export function h18_handler_16(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(input).length > 2;
}
export function h18_handler_17(input: Record<string, unknown>): boolean {
  return typeof input === 'object' && input !== null && Object.keys(in
