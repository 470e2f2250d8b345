/**
 * A complete page-request group as the IOMMU core hands it to a FAULT object (partial grouping
 * already happened in the core). Groups are pooled: the core moves a group's `generation` on each
 * time it is answered and reused, and whoever holds a group checks the generation it had when it
 * arrived at every touch.
 */
export interface FaultGroup {
  /** The iommufd DEVICE id. */
  readonly devId: number;
  /** The physical StreamID (RID) whose requests formed the group: host knowledge, not in the uAPI. */
  readonly streamId: number;
  readonly pasid: number;
  readonly pasidValid: boolean;
  readonly grpid: number;
  /** Number of page requests in the group (>= 1). */
  readonly count: number;
  /** Page address of request i (i < count), a plain number < 2^53. */
  readonly addresses: Float64Array;
  /** Perm bits of request i: 1 read, 2 write, 4 exec, 8 priv (same as PERM_*). */
  readonly accesses: Uint8Array;
  /** Identity of the (device, pasid) attachment that raised it. */
  readonly attachment: object;
  /** The group stands for a stalled transaction (SMMUv3 stall model), not for page requests. */
  readonly stall?: boolean;
  /** Moves on each time the (pooled) group is answered and reused. */
  readonly generation: number;
  /**
   * Send the response to the device for the group as it was at `generation`; the FAULT object
   * calls it at most once per group. False when the group had moved on (nothing sent).
   */
  respond(code: number, generation: number): boolean;
}
