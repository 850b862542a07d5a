using Vism.Host.Status;
using Vism.Testing;
using Xunit.Abstractions;

namespace Vism.E2E.Tests;

/// <summary>
/// Issue 9's proof: <c>vism run</c> serves three vhost-user devices; two QEMU 11.1 guests share
/// one ISM region through it exactly as the v1 cover letter's usage goes (alloc -> token ->
/// attach -> write -> notify -> read), with update events on the eventq, and a third guest
/// without ATTACH permission is refused. The flows are tools/guest/flows/a.vism, b.vism and
/// c.vism; every guest's output is printed.
/// </summary>
public sealed class TwoGuestTests(ITestOutputHelper testOutput)
{
    private readonly Action<string> _log = TestLog.For(testOutput);
    private static readonly TimeSpan Boot = TimeSpan.FromMinutes(5);
    private static readonly TimeSpan Run = TimeSpan.FromMinutes(15);

    /// <summary>controlq + eventq: what a device with the <c>vq</c> event plugin has.</summary>
    private const int Queues = 2;

    private QemuGuest Start(VismProcess vism, string role, string? token = null) =>
        QemuGuest.Start(new QemuGuestOptions
        {
            Name = role,
            Role = role,
            VhostUserSocket = vism.Socket(role),
            Queues = Queues,
            Timeout = Run,
            Variables = token is null ? new Dictionary<string, string>() : new Dictionary<string, string> { ["token"] = token },
        }, _log);

    private static bool IsAlloc(string line, ulong size) =>
        line.StartsWith("alloc ", StringComparison.Ordinal) && GuestOutput.Number(line, "size") == size;

    [SkippableFact]
    public async Task TwoGuests_ExchangeMessagesThroughOneRegion_AndAGuestWithoutAttachPermissionIsRefused()
    {
        _ = Machine.QemuRoot; // skips before vism starts when QEMU is not prepared
        await using var vism = await VismProcess.StartAsync(["a", "b", "c"], _log);

        // A allocates the shared region and a second one whose default entry lacks ATTACH.
        await using var guestA = Start(vism, "a");
        string shared = await guestA.WaitForLineAsync(l => IsAlloc(l, 1 << 20), Boot);
        string priv = await guestA.WaitForLineAsync(l => IsAlloc(l, 4096), Boot);
        await guestA.WaitForLineAsync(l => l.StartsWith("grant ", StringComparison.Ordinal), Boot);

        // C tries the private region while A holds it, and must be refused.
        GuestRun runC;
        await using (var guestC = Start(vism, "c", GuestOutput.Field(priv, "token")))
            runC = await guestC.Completion;
        _log(runC.ToString());

        // B attaches the shared region; A and B exchange a message and a reply, then both detach
        // and pause with their devices still started, so vism's state shows what the detaches did.
        await using var guestB = Start(vism, "b", GuestOutput.Field(shared, "token"));
        await guestB.WaitForLineAsync(l => l == "> pause --timeout 900", Run);
        await guestA.WaitForLineAsync(l => l == "> pause --timeout 900", Run);
        StatusReport whileRunning = vism.Status();
        guestA.SendLine();
        guestB.SendLine();
        GuestRun runB = await guestB.Completion;
        GuestRun runA = await guestA.Completion;
        _log(runA.ToString());
        _log(runB.ToString());
        StatusReport after = vism.Status();
        foreach (DeviceReport d in after.Devices)
            _log($"vism device {d.Name} (devid {d.DevId}): " + string.Join(", ", d.Counters.OrderBy(c => c.Key).Select(c => $"{c.Key}={c.Value}")));

        // C: refused for the region's permissions, and its device keeps working.
        Assert.Equal(0, runC.FlowExitCode);
        Assert.NotNull(runC.Line("refused"));
        Assert.Equal(1, after.Devices.Single(d => d.Name == "c").Counters.GetValueOrDefault("err.attach.denied"));
        Assert.NotNull(runC.Line("alloc"));

        // B: attached, got A's notify on its eventq, read the exact message.
        Assert.Equal(0, runB.FlowExitCode);
        ulong offsetB = GuestOutput.Number(runB.Line("attach"), "offset")!.Value;
        Assert.Equal($"0x{offsetB:x}", GuestOutput.Field(runB.Line("event"), "offsets"));
        Assert.Equal("hello from guest A", GuestOutput.Field(runB.Line("read"), "text"));

        // A: an event for B's "attached" notify and one for its reply, then the exact reply.
        Assert.Equal(0, runA.FlowExitCode);
        ulong offsetA = GuestOutput.Number(shared, "offset")!.Value;
        IReadOnlyList<string> eventsA = runA.Lines("event");
        Assert.Equal(2, eventsA.Count);
        Assert.All(eventsA, e => Assert.Equal($"0x{offsetA:x}", GuestOutput.Field(e, "offsets")));
        Assert.Equal("reply from guest B", GuestOutput.Field(runA.Line("read"), "text"));

        // Every notify stored a new value into its slot (B detaches right after its reply: the
        // events above show vism routed the notify before it served that detach).
        Assert.All(runA.Lines("notify").Concat(runB.Lines("notify")), n => Assert.NotEqual("0", GuestOutput.Field(n, "value")));

        // The detaches alone freed both of A's regions: A and B were still started and connected.
        Assert.Empty(whileRunning.Regions);
        foreach (string name in new[] { "a", "b" })
        {
            DeviceReport d = whileRunning.Devices.Single(x => x.Name == name);
            Assert.True(d.Connected && d.Status.Contains("DriverOk", StringComparison.Ordinal), $"{name}: {d.Status}");
            Assert.Equal(0, d.RegionsInUse);
        }
        Assert.Equal(2, whileRunning.Devices.Single(d => d.Name == "a").Counters.GetValueOrDefault("regions.freed"));
        Assert.Empty(after.Regions);

        // vism stops cleanly after serving the guests (SIGTERM, exit 0).
        Assert.Equal(0, await vism.StopAsync());
    }
}
