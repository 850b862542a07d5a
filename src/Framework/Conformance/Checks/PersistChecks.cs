using System.Text;
using Vism.Abstractions;
using Vism.Conformance.Composition;
using Vism.Driver;

namespace Vism.Conformance.Checks;

/// <summary>Persisted regions keep the trust model across restarts and VMM deaths (vism issue 13, point 5).</summary>
internal static class PersistChecks
{
    private const string Issue = "vism issue 13, point 5";
    private const string Rule = "A persisted region records its owner and permission table; after a restart only devices that record allows can attach, " +
                                "the owner keeps MANAGE, and a non-owner's DETACH never frees the owner's region.";

    private const IsmPermissions ReadOnly = IsmPermissions.Attach | IsmPermissions.Read;

    public static IEnumerable<ConformanceCheck> All =>
    [
        new("persist.table-kept",
            "after a restart a persisted region admits only the devices its table allowed, with their permissions; its owner still holds MANAGE",
            new Statement(Issue, Rule),
            TableKept),
        new("persist.non-owner-detach",
            "after a restart a non-owner that attaches a persisted region and detaches it as the last reference does not free it; the owner finds its data",
            new Statement(Issue, Rule),
            NonOwnerDetach),
        new("persist.vmm-dies",
            "while the host runs, a persisted region outlives its owner's VMM and its peer's DETACH; the owner's new VMM attaches it with its data, and its DETACH frees it",
            new Statement("vism issue 13, point 5, as decided in docs/conformance.md, Persistence and dead VMMs", "A persistent region is freed only when its owner detaches it as the last reference: a reset, a dead VMM or a non-owner's DETACH leaves it for the owner to attach again."),
            VmmDies),
    ];

    private static readonly byte[] Data = Encoding.ASCII.GetBytes("persisted by device a");

    private static HostSpec Spec(string state) => new() { Devices = 3, Persist = true, StateDirectory = state };

    /// <summary>Device a allocates a persisted region, writes <see cref="Data"/>, lets only b attach (read-only); the host restarts.</summary>
    private static (Rig Rig, ulong Token) Restarted(CheckContext ctx)
    {
        string state = ctx.TempDirectory();
        Rig first = ctx.Compose(Spec(state));
        (ulong token, ulong at) = first.A.Alloc();
        first.A.Write(at, Data);
        first.A.Grant(at, 0, IsmPermissions.None);           // nobody without an entry may attach
        first.A.Grant(at, first.B.DevId, ReadOnly);           // b may, read-only
        first.DisposeAsync().AsTask().GetAwaiter().GetResult();
        Rig again = ctx.Compose(Spec(state));
        ctx.Expect(again.Snapshot().Regions.Any(r => r.Recovered),
            "the restarted host recovered no region: the memory kind's persist option kept nothing");
        return (again, token);
    }

    private static void TableKept(CheckContext ctx)
    {
        (Rig rig, ulong token) = Restarted(ctx);
        rig.C.ExpectErr(rig.C.Client.Attach(token).Ack, "ATTACH by device c, which the region's table (default entry: no ATTACH) does not admit, after the restart");
        ulong b = rig.B.Attach(token);
        ctx.Expect(rig.B.Read(b, Data.Length).AsSpan().SequenceEqual(Data), "device b does not read device a's data after the restart");
        rig.B.ExpectErr(rig.B.Client.Grant(b, rig.C.DevId, IsmPermissions.All), "GRANT by device b, which has no MANAGE, after the restart");
        ulong a = rig.A.Attach(token);
        rig.A.Grant(a, rig.C.DevId, ReadOnly); // the owner still manages it
    }

    private static void NonOwnerDetach(CheckContext ctx)
    {
        (Rig rig, ulong token) = Restarted(ctx);
        ulong b = rig.B.Attach(token);
        rig.B.Detach(b);
        AttachExpectingData(ctx, rig.A, token, "device b (not the owner) attached and detached it as the last reference after the restart");
    }

    private static void VmmDies(CheckContext ctx)
    {
        Rig rig = ctx.Compose(Spec(ctx.TempDirectory()));
        (ulong token, ulong at) = rig.A.Alloc();
        rig.A.Write(at, Data);
        ulong b = rig.B.Attach(token);
        rig.A.Kill();                                          // the owner's VMM dies: its reference goes
        rig.B.Detach(b);                                       // the last reference goes, by a non-owner
        rig.Settle();
        ctx.Expect(rig.Snapshot().Regions.Count == 1, $"after the owner's VMM died and the peer detached, the host holds {rig.Snapshot().Regions.Count} regions, expected the persisted one");
        rig.A.Connect();
        ulong a = AttachExpectingData(ctx, rig.A, token, "the owner's VMM died and device b detached it");
        rig.A.Detach(a);                                       // the owner frees it
        rig.Settle();
        rig.A.ExpectErr(rig.A.Client.Attach(token).Ack, "ATTACH after the owner detached its persisted region as the last reference");
        ctx.Expect(rig.Snapshot().Regions.Count == 0, "the owner detached its persisted region as the last reference but the host still holds it");
    }

    private static ulong AttachExpectingData(CheckContext ctx, Peer owner, ulong token, string after)
    {
        AttachReply r = owner.Client.Attach(token);
        ctx.Expect(r.Ok, $"device a (the owner) cannot attach its persisted region after {after}: ack {r.Ack} ({owner.Errors()}); the region was freed");
        ctx.Expect(owner.Read(r.Offset, Data.Length).AsSpan().SequenceEqual(Data), $"device a's data is gone after {after}");
        return r.Offset;
    }
}
