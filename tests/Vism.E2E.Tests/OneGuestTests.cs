using Vism.Testing;
using Xunit.Abstractions;

namespace Vism.E2E.Tests;

/// <summary>One QEMU guest drives one vism device over vhost-user with vism-guest.</summary>
public sealed class OneGuestTests(ITestOutputHelper testOutput)
{
    private readonly Action<string> _log = TestLog.For(testOutput);

    private static readonly TimeSpan Boot = TimeSpan.FromMinutes(5);

    /// <summary>Boots a guest on <paramref name="device"/> (no event channel: the controlq only)
    /// running <paramref name="flow"/> with vism-guest's set-up steps logged.</summary>
    private QemuGuest Start(VismRig vism, Vism.Core.IsmDevice device, string socket, string flow) =>
        QemuGuest.Start(new QemuGuestOptions
        {
            Name = device.Description.Name,
            VhostUserSocket = socket,
            Queues = vism.On(() => device.QueueCount),
            Timeout = Boot,
            Variables = new Dictionary<string, string> { ["verbose"] = "1" },
            Flow = flow,
        }, _log);

    [SkippableFact]
    public async Task Guest_AllocatesWritesAndReadsARegion_ThenDetachFreesIt()
    {
        await using var vism = new VismRig(_log);
        var (device, socket) = vism.AddDevice("a");
        await using var guest = Start(vism, device, socket, """
            info
            alloc 64K
            write $offset hello through vism
            read $offset 64
            detach $offset
            """);
        GuestRun run = await guest.Completion;
        _log(run.ToString());
        _log(vism.DescribeCounters());

        Assert.False(run.TimedOut);
        Assert.Equal(0, run.FlowExitCode);
        string? info = run.Line("info");
        Assert.Equal(device.DevId, GuestOutput.Number(info, "devid"));
        Assert.Equal(vism.Host.Gid, GuestOutput.Number(info, "gid"));
        Assert.Equal(VismRig.MiB, GuestOutput.Number(info, "region_size"));
        string? alloc = run.Line("alloc");
        Assert.NotEqual(0UL, GuestOutput.Number(alloc, "token"));
        Assert.Equal("hello through vism", GuestOutput.Field(run.Line("read"), "text"));
        Assert.Equal(0, vism.Host.RegionCount);
    }

    [SkippableFact]
    public async Task GuestWrites_LandInVismRegionMemory_AndVismWrites_ReachTheGuest()
    {
        await using var vism = new VismRig(_log);
        var (device, socket) = vism.AddDevice("a");
        await using var guest = Start(vism, device, socket, """
            alloc 64K
            write $offset written by the guest
            poll --timeout 240 $offset+4096 written by vism
            detach $offset
            """);

        string alloc = await guest.WaitForLineAsync(l => l.StartsWith("alloc ", StringComparison.Ordinal), Boot);
        await guest.WaitForLineAsync(l => l.StartsWith("write ", StringComparison.Ordinal), Boot);
        ulong token = GuestOutput.Number(alloc, "token")!.Value;
        using (var region = vism.MapRegion(device, token))
        {
            Assert.Equal("written by the guest\0"u8.ToArray(), region.Span(0, 21).ToArray());
            "written by vism\0"u8.CopyTo(region.Span(4096, 16));
        }
        GuestRun run = await guest.Completion;
        _log(run.ToString());

        Assert.Equal(0, run.FlowExitCode);
        Assert.Equal("written by vism", GuestOutput.Field(run.Line("poll"), "text"));
        Assert.Equal(0, vism.Host.RegionCount);
    }
}
