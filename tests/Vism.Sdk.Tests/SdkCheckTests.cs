using System.Diagnostics;
using System.Text.RegularExpressions;
using Vism.Testing;

namespace Vism.Sdk.Tests;

/// <summary>scripts/sdk-check.sh as CI runs it: the packages and the template, from the local feed
/// only, give each kind of plugin a project that builds, passes its own conformance test and passes
/// `vism matrix --plugins`.</summary>
public sealed class SdkCheckTests
{
    private static readonly TimeSpan Limit = TimeSpan.FromMinutes(20);

    [Fact]
    public async Task SdkCheck_EveryTemplateKind_BuildsFromThePackagesAndPassesConformance()
    {
        string root = GuestImage.RepositoryRoot;
        var start = new ProcessStartInfo("bash", [Path.Combine(root, "scripts", "sdk-check.sh"), "--no-build"])
        {
            WorkingDirectory = root,
            RedirectStandardOutput = true,
            RedirectStandardError = true,
        };
        // The test host's MSBuild/dotnet-test variables must not leak into the nested dotnet runs.
        foreach (string name in new[] { "MSBuildExtensionsPath", "MSBuildSDKsPath", "MSBUILD_EXE_PATH", "VSTEST_HOST_DEBUG", "DOTNET_HOST_PATH" })
            start.Environment.Remove(name);
        using var process = Process.Start(start)!;
        Task<string> stdout = process.StandardOutput.ReadToEndAsync();
        Task<string> stderr = process.StandardError.ReadToEndAsync();
        using var timeout = new CancellationTokenSource(Limit);
        try
        {
            await process.WaitForExitAsync(timeout.Token);
        }
        catch (OperationCanceledException)
        {
            process.Kill(entireProcessTree: true);
            await process.WaitForExitAsync();
            Assert.Fail($"sdk-check.sh did not finish in {Limit}:\n{await stdout}\n{await stderr}");
        }
        string output = await stdout + await stderr;

        Assert.True(process.ExitCode == 0, $"sdk-check.sh exited {process.ExitCode}:\n{output}");
        Assert.Contains("sdk-check: all 3 kind(s) passed", output);
        Assert.Contains("sdk-check: built the generated plugins and their tests against the packages", output);
        Assert.Contains("sdk-check: restores: Vism.* ", output);
        foreach (string kind in new[] { "memory", "events", "transport" })
        {
            string name = $"Acme.{char.ToUpperInvariant(kind[0])}{kind[1..]}Check";
            Assert.Matches($@"Passed! +- Failed: +0, Passed: +1, .* - {Regex.Escape(name)}\.Tests\.dll", output);
            Assert.Contains($"[{kind}] published {name}", output);
            Assert.Matches($@"\[{kind}\]   \d+ combination\(s\) x \d+ check\(s\): [1-9]\d* passed, 0 failed, 0 skipped", output);
        }
    }
}
