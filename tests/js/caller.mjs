// A real AWS SDK for JavaScript v3 client for the agent's tests.
//
//   node caller.mjs PROVIDER            resolve credentials, call STS GetCallerIdentity at
//                                       AWS_ENDPOINT_URL_STS, print the caller's ARN
//   node caller.mjs PROVIDER --resolve  only resolve credentials, print their expiration
//
// PROVIDER: http (fromHttp), container (fromContainerMetadata), imds (fromInstanceMetadata),
// chain (the default Node.js chain). Every setting comes from the environment, as it would
// for an unmodified application. Errors go to stderr as "Name: message", with exit code 1.
import { GetCallerIdentityCommand, STSClient } from "@aws-sdk/client-sts";
import {
  fromContainerMetadata,
  fromHttp,
  fromInstanceMetadata,
} from "@aws-sdk/credential-providers";

const providers = {
  http: () => fromHttp({}),
  container: () => fromContainerMetadata({}),
  imds: () => fromInstanceMetadata({}),
  chain: () => undefined,
};

async function main([name, mode]) {
  if (!(name in providers)) {
    throw new Error(`unknown provider ${name}; use ${Object.keys(providers).join(", ")}`);
  }
  const credentials = providers[name]();
  if (mode === "--resolve") {
    const resolved = await credentials();
    console.log(resolved.expiration.toISOString());
    return;
  }
  const client = new STSClient({ credentials });
  const identity = await client.send(new GetCallerIdentityCommand({}));
  console.log(identity.Arn);
}

main(process.argv.slice(2)).catch((error) => {
  console.error(`${error.name}: ${error.message}`);
  process.exit(1);
});
