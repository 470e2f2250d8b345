/** A hostile SMMUv3 guest's forged commands: CMD_PRI_RESP and CMD_RESUME (command-forger.ts). */
import {
  encodePriResp,
  encodeResume,
  newPriRespCommand,
  newResumeCommand,
  PRI_RESP_INVALID,
  PRI_RESP_RESERVED,
  PRI_RESP_SUCCESS,
  RESUME_ABORT,
  RESUME_RETRY,
} from '../shared/records/cmdq-entry.ts';
import type { RingProducer } from '../shared/ring.ts';
import { type CommandForger, commitIfRoom } from './command-forger.ts';

export class Smmuv3Forger implements CommandForger {
  private readonly response = newPriRespCommand();
  private readonly resumeCommand = newResumeCommand();

  constructor(private readonly cmdq: RingProducer) {}

  group(streamId: number, pasid: number, prgIndex: number, success: boolean): boolean {
    return this.priResp(streamId, pasid, prgIndex, success ? PRI_RESP_SUCCESS : PRI_RESP_INVALID);
  }

  resume(streamId: number, stag: number, retry: boolean): boolean {
    const c = this.resumeCommand;
    c.streamId = streamId;
    c.stag = stag;
    c.action = retry ? RESUME_RETRY : RESUME_ABORT;
    return commitIfRoom(this.cmdq, encodeResume, c);
  }

  illegal(streamId: number, prgIndex: number): boolean {
    return this.priResp(streamId, -1, prgIndex, PRI_RESP_RESERVED);
  }

  private priResp(streamId: number, pasid: number, prgIndex: number, resp: number): boolean {
    const c = this.response;
    c.streamId = streamId;
    c.ssv = pasid >= 0;
    c.substreamId = Math.max(pasid, 0);
    c.prgIndex = prgIndex;
    c.resp = resp;
    return commitIfRoom(this.cmdq, encodePriResp, c);
  }
}
