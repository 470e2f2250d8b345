/**
 * The driver side of the stall model (stall.ts): it turns a recorded stall into a one-request IOPF
 * group and the group's answer into a RESUME, as Linux's arm-smmu-v3 does: SUCCESS retries,
 * INVALID and FAILURE abort, and STALL_RESP_TERMINATE terminates with Ab=0. Linux's fault fd
 * cannot carry that third answer from a VMM; the sandbox's can (IOMMUFD_PAGE_RESP_TERMINATE), so
 * a guest's vSMMU can run either terminate model.
 */
import { PAGE_SIZE } from '../../shared/guest-memory.ts';
import type { IopfRoutes } from './fault-router.ts';
import { type IopfGroup, type IopfHandler, IopfQueue } from './iopf.ts';
import { newPageRequest, PRG_INVALID, PRG_SUCCESS, type PriEndpoint } from './page-request.ts';
import { ACCESS_EXEC, ACCESS_PRIV, ACCESS_WRITE } from './stage1-walker.ts';
import { newStalledTransaction, type StallModel } from './stall.ts';

/**
 * The answer to a stall's group that terminates it without the abort bit (CMD_RESUME Ac=0 Ab=0):
 * RAZ/WI with TERM_MODEL=0, abort with 1. Not a PCIe PRG code (2 is reserved there); the fault fd
 * carries it as IOMMUFD_PAGE_RESP_TERMINATE, for stall groups only.
 */
export const STALL_RESP_TERMINATE = 2;
export interface StallIopfStats {
  /** Stalls handed to the IOPF layer as groups. */
  raised: number;
  /** Group answers turned into RESUME(Retry) / RESUME(Abort) / RESUME(Terminate, Ab=0). */
  retried: number;
  aborted: number;
  terminated: number;
  /** Pending groups answered here because their stall went away first (STALL_TERM, disable, ...). */
  cancelled: number;
  /** Stage-2 stalls: the host's own, never reported as IOPF, aborted instead. */
  stage2Aborted: number;
  /** toIopf() for a (StreamID, STAG) that names no stall. */
  unknown: number;
}

/**
 * The driver side of the stall model (Linux arm_smmu_handle_evt / arm_smmu_page_response,
 * docs/queues.md, stalls): a recorded stage-1 stall becomes a one-request IOPF group (grpid =
 * STAG, Last set, PASID when SSV, perm from RnW/InD/PnU) for the handler of its address space; the
 * answer becomes a RESUME: SUCCESS -> Retry, INVALID or FAILURE -> Abort, STALL_RESP_TERMINATE ->
 * Terminate with Ab=0.
 *
 * It owns an IopfQueue of its own: STAGs are 16-bit while the PRI queue keys groups by a 9-bit PRG
 * index, and its groups' answers go back to the stall model rather than to a device's PRI.
 *
 * Exactly once, both ways: the queue answers each group once; and when a stall is released by
 * anything but its group's answer (a RESUME from elsewhere, STALL_TERM, SMMUEN -> 0), its pending
 * group is answered INVALID here first, so a late answer from the handler is a no-op and can never
 * resume a newer stall that reused the STAG.
 */
export class StallIopfBridge implements IopfRoutes {
  readonly iopf: IopfQueue;
  readonly stats: StallIopfStats = {
    raised: 0,
    retried: 0,
    aborted: 0,
    terminated: 0,
    cancelled: 0,
    stage2Aborted: 0,
    unknown: 0,
  };
  /** The pending group of each stall slot, its generation, and the handler holding it. */
  private readonly groupOf: (IopfGroup | undefined)[];
  private readonly groupGeneration: Int32Array;
  private readonly holderOf: (IopfHandler | undefined)[];
  private readonly responders = new Map<number, PriEndpoint>();
  private readonly request = newPageRequest();
  private readonly found = newStalledTransaction();
  private cancelling = false;
  /**
   * Stands between the queue and the real handler to note which group belongs to which stall; a
   * group the queue takes back (its deadline) is taken back from the real handler.
   */
  private readonly capture: IopfHandler = {
    handleGroup: (group) => this.hold(group),
    revoke: (group) => {
      const handle = this.model.handleOf(group.streamId, group.grpid);
      if (handle >= 0) this.holderOf[handle]?.revoke?.(group);
    },
  };

  constructor(
    private readonly model: StallModel,
    /** Where (StreamID, PASID)'s faults go; a request without PASID asks for PASID 0. */
    private readonly router: Pick<IopfRoutes, 'handlerOf'>,
  ) {
    this.groupOf = new Array<IopfGroup | undefined>(model.capacity).fill(undefined);
    this.groupGeneration = new Int32Array(model.capacity);
    this.holderOf = new Array<IopfHandler | undefined>(model.capacity).fill(undefined);
    model.setReleaseListener({ stallReleased: (handle) => this.cancel(handle) });
    this.iopf = new IopfQueue(this, true);
  }

  /** Groups raised and not answered yet. */
  get pending(): number {
    return this.iopf.pending;
  }

  /**
   * Report the recorded stall (streamId, stag) as a one-request IOPF group. Returns false when it
   * was not raised: no such stall, a group already pending for it, or a stage-2 stall (aborted).
   */
  toIopf(streamId: number, stag: number): boolean {
    const t = this.found;
    if (!this.model.find(streamId, stag, t)) {
      this.stats.unknown++;
      return false;
    }
    if (this.groupOf[t.handle] !== undefined) return false;
    if (t.stage2) {
      // Linux reports only stage-1 stalls; stage 2 is the host's and pinned, so no page-in helps.
      this.stats.stage2Aborted++;
      this.model.resume(streamId, stag, false, true);
      return false;
    }
    const r = this.request;
    r.streamId = streamId;
    r.pasid = t.ssv ? t.ssid : 0;
    r.ssv = t.ssv;
    r.address = t.address - (t.address % PAGE_SIZE);
    r.prgIndex = stag;
    // RnW=1 is a read, RnW=0 a write; InD is exec; PnU is privileged.
    r.write = (t.access & ACCESS_WRITE) !== 0;
    r.read = !r.write;
    r.exec = (t.access & ACCESS_EXEC) !== 0;
    r.privileged = (t.access & ACCESS_PRIV) !== 0;
    r.last = true;
    this.stats.raised++;
    this.iopf.report(r);
    return true;
  }

  private hold(group: IopfGroup): void {
    const handle = this.model.handleOf(group.streamId, group.grpid);
    const handler = this.router.handlerOf(group.streamId, group.pasid);
    if (handle >= 0) {
      this.groupOf[handle] = group;
      this.groupGeneration[handle] = group.generation;
      this.holderOf[handle] = handler;
    }
    if (handler) handler.handleGroup(group);
    else group.respond(PRG_INVALID);
  }

  /**
   * The bridge's queue sends a group to the bridge's capture when the stream's router has a
   * handler for it; with none the queue answers INVALID at once, which aborts the stall (Linux:
   * "nobody cared").
   */
  handlerOf(streamId: number, pasid: number): IopfHandler | undefined {
    return this.router.handlerOf(streamId, pasid) ? this.capture : undefined;
  }

  /** The answer to a stall group resumes the stalled transaction. */
  endpointOf(streamId: number): PriEndpoint {
    let responder = this.responders.get(streamId);
    if (!responder) {
      responder = { prgResponse: (_pasid, _ssv, grpid, code) => this.answer(streamId, grpid, code) };
      this.responders.set(streamId, responder);
    }
    return responder;
  }

  /** The queue's one answer for a group: RESUME the stall it stands for. */
  private answer(streamId: number, stag: number, code: number): void {
    // Our own cancellation: the stall is already gone.
    if (this.cancelling) return;
    const handle = this.model.handleOf(streamId, stag);
    if (handle >= 0) {
      this.groupOf[handle] = undefined;
      this.holderOf[handle] = undefined;
    }
    const retry = code === PRG_SUCCESS;
    // Terminate without the abort bit: RAZ/WI, unless TERM_MODEL=1 makes every termination abort.
    const abort = !retry && code !== STALL_RESP_TERMINATE;
    if (retry) this.stats.retried++;
    else if (abort) this.stats.aborted++;
    else this.stats.terminated++;
    this.model.resume(streamId, stag, retry, abort);
  }

  /**
   * A stall went away while its group was pending: take the group back from its holder (the fault
   * queue must not keep a group that is about to be freed) and answer it, so no later answer counts.
   */
  private cancel(handle: number): void {
    const group = this.groupOf[handle];
    if (group === undefined) return;
    const holder = this.holderOf[handle];
    this.groupOf[handle] = undefined;
    this.holderOf[handle] = undefined;
    if (group.generation === this.groupGeneration[handle]) holder?.revoke?.(group);
    this.cancelling = true;
    if (this.iopf.respond(group, this.groupGeneration[handle], PRG_INVALID)) this.stats.cancelled++;
    this.cancelling = false;
  }
}
