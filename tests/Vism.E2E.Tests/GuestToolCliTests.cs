using System.Diagnostics;
using Vism.Testing;

namespace Vism.E2E.Tests;

/// <summary>
/// vism-guest's command line and script handling, run on this machine. Every run names a PCI
/// address that cannot exist, so the tool never touches a device here: a usage error must be
/// reported before any device access (exit 1, not 2).
/// </summary>
public sealed class GuestToolCliTests
{
    private const string NoSuchDevice = "9999:99:99.9";

    private static (int Code, string Out, string Err) Run(params string[] args)
    {
        var psi = new ProcessStartInfo(GuestImage.Tool)
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            UseShellExecute = false,
        };
        psi.ArgumentList.Add("--pci");
        psi.ArgumentList.Add(NoSuchDevice);
        foreach (string a in args) psi.ArgumentList.Add(a);
        using var p = Process.Start(psi)!;
        Task<string> stdout = p.StandardOutput.ReadToEndAsync();
        Task<string> stderr = p.StandardError.ReadToEndAsync();
        Assert.True(p.WaitForExit(TimeSpan.FromMinutes(1)), "vism-guest did not exit");
        return (p.ExitCode, stdout.Result, stderr.Result);
    }

    [SkippableFact]
    public void MissingDevice_ExitsWith2_NamingWhatWasLookedFor()
    {
        var (code, _, err) = Run("info");

        Assert.Equal(2, code);
        Assert.Contains("no virtio-ism device", err);
        Assert.Contains($"at {NoSuchDevice}", err);
    }

    [SkippableFact]
    public void BadNumber_IsAUsageError_ReportedBeforeAnyDeviceAccess()
    {
        var (code, _, err) = Run("alloc", "lots");

        Assert.Equal(1, code);
        Assert.Contains("alloc: 'lots' is not a number", err);
    }

    [SkippableFact]
    public void UnknownPermissionName_IsAUsageError()
    {
        var (code, _, err) = Run("grant", "0", "0", "read,fly");

        Assert.Equal(1, code);
        Assert.Contains("unknown permission 'fly'", err);
    }

    [SkippableFact]
    public void CommandsSeparatedByDoubleDash_RunInOrder_EachEchoedBeforeItsResult()
    {
        var (code, output, _) = Run("-D", "who=guest", "echo", "one", "$who", "--", "echo", "two");

        Assert.Equal(0, code);
        Assert.Equal("> echo one $who\none guest\n> echo two\ntwo\n", output);
    }

    [SkippableFact]
    public void ScriptError_NamesScriptAndLine_AndStopsTheScript()
    {
        using var dir = new TempDir("vgcli");
        File.WriteAllText(dir["flow.vism"], "# comment\necho \"first  line\"\nfrobnicate 1\necho never\n");

        var (code, output, err) = Run("run", dir["flow.vism"]);

        Assert.Equal(1, code);
        Assert.Contains($"{dir["flow.vism"]}:3: unknown command 'frobnicate'", err);
        Assert.Contains("first  line\n", output);
        Assert.DoesNotContain("never", output);
    }

    [SkippableFact]
    public void UnknownVariable_IsAUsageError_NamingIt()
    {
        var (code, _, err) = Run("echo", "$token");

        Assert.Equal(1, code);
        Assert.Contains("unknown variable $token", err);
    }
}
